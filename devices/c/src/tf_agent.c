/* tf_agent: see tf_agent.h. Mirrors devices/agent.py (_handle_locked, _train, _evaluate, _adapt)
 * and devices/learning/learner.py (train, adapt, evaluate) step by step. */
#include "tf_agent.h"

#include <math.h>
#include <string.h>

#include "tf_sha256.h"

typedef struct {
    const char *name;
    double value;
} metric;

typedef struct {
    metric metrics[TF_AGENT_MAX_METRICS];
    int n_metrics;
    tf_out_tensor tensors[TF_AGENT_MAX_TENSORS];
    int n_tensors;
    const char *encoding;      /* "weights" / "delta" / NULL */
    int has_local_layers;
    uint32_t local_mask;
} result;

static void add_metric(result *r, const char *name, double value) {
    if (r->n_metrics < TF_AGENT_MAX_METRICS) {
        r->metrics[r->n_metrics].name = name;
        r->metrics[r->n_metrics].value = value;
        r->n_metrics++;
    }
}

/* ------------------------------------------------------------------------------------ setup */
static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint32_t crc32_of(const char *s) {
    uint32_t c = 0xFFFFFFFFu;
    for (; *s; s++) {
        c ^= (uint8_t)*s;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

int tf_agent_init(tf_agent *a, const tf_agent_config *cfg, const uint16_t *sizes, int n_sizes, int kind, int act,
                  const float *x, const float *y, const int32_t *labels, uint32_t n, double eval_fraction) {
    a->cfg = *cfg;
    if (tf_head_init(&a->head, sizes, n_sizes, kind, act) != TF_HEAD_OK) return -1;
    const uint32_t n_in = sizes[0], n_out = sizes[n_sizes - 1];
    if (n > TF_AGENT_MAX_SAMPLES || n_in > TF_AGENT_MAX_IN || n_out > TF_AGENT_MAX_OUT) return -1;
    if ((kind == TF_REGRESSION && y == NULL) || (kind == TF_CLASSIFICATION && labels == NULL)) return -1;
    memcpy(a->x, x, sizeof(float) * n * n_in);
    for (uint32_t i = 0; i < n; i++) {
        if (kind == TF_REGRESSION) {
            memcpy(a->y + i * n_out, y + i * n_out, sizeof(float) * n_out);
        } else {
            if (labels[i] < 0 || (uint32_t)labels[i] >= n_out) return -1;
            a->labels[i] = labels[i];
        }
    }
    a->n_samples = n;
    uint32_t n_eval = 0;
    if (n > 1) {
        double r = nearbyint(n * eval_fraction); /* Python's round: ties to even */
        n_eval = r < 1.0 ? 1u : (uint32_t)r;
        if (n_eval > n) n_eval = n;
    }
    a->n_eval = n_eval;
    a->n_train = n - n_eval;
    a->samples_seen = a->tasks_done = a->errors_sent = 0;
    a->has_last_loss = 0;
    a->rng = cfg->seed;
    a->personal_mask = 0;
    a->cache_head = a->cache_count = 0;
    a->started = tf_platform_monotonic();
    return 0;
}

int tf_agent_topic(const tf_agent *a, const char *kind, char *buf, size_t cap) {
    const char *parts[] = {"tinyfleet/v1/", a->cfg.fleet, "/", a->cfg.device_id, "/", kind};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        size_t k = strlen(parts[i]);
        if (n + k + 1 > cap) return -1;
        memcpy(buf + n, parts[i], k);
        n += k;
    }
    buf[n] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------------------ replies */
static void new_id(char out[33]) {
    static const char HEX[] = "0123456789abcdef";
    uint8_t r[16];
    tf_platform_random(r, sizeof r);
    for (int i = 0; i < 16; i++) {
        out[2 * i] = HEX[r[i] >> 4];
        out[2 * i + 1] = HEX[r[i] & 15];
    }
    out[32] = '\0';
}

/* The result frame: req (decoded request or NULL), rid (id token or NULL), task (-1: null). */
static size_t build_reply(tf_agent *a, const tf_frame *req, const tf_json *rid, int task, const result *res,
                          tf_err_code code, const char *reason) {
    tf_writer w;
    char id[33], prefix[1600]; /* 128 code points, escaped: at most 12 bytes each */
    new_id(id);
    tf_w_init(&w, a->out, sizeof a->out);
    tf_frame_begin(&w);
    tf_w_int(&w, "v", TF_PROTOCOL_VERSION);
    tf_w_str(&w, "type", "result");
    tf_w_str(&w, "id", id);
    if (rid != NULL && rid->type == TF_JSON_STRING && rid->n > 2) {
        size_t k = tf_json_str_prefix(rid, 128, prefix, sizeof prefix);
        tf_w_json(&w, "reply-to", prefix, k <= sizeof prefix ? k : 0);
    } else {
        tf_w_null(&w, "reply-to");
    }
    tf_w_str(&w, "device", a->cfg.device_id);
    if (task >= 0 && task != TF_MSG_RESULT)
        tf_w_str(&w, "task", tf_msg_names[task]);
    else
        tf_w_null(&w, "task");
    tf_w_num(&w, "ts", floor(tf_platform_unix_time() * 1000.0 + 0.5) / 1000.0);
    tf_w_bool(&w, "ok", code == TF_OK);
    tf_w_obj_begin(&w, "metrics");
    for (int i = 0; res != NULL && i < res->n_metrics; i++) tf_w_num(&w, res->metrics[i].name, res->metrics[i].value);
    tf_w_obj_end(&w);
    if (req != NULL && req->has_run) /* copied from the task, null when it had none (the coordinator needs both) */
        tf_w_json(&w, "run", req->run.p, req->run.n);
    else
        tf_w_null(&w, "run");
    if (req != NULL && req->has_round)
        tf_w_json(&w, "round", req->round.p, req->round.n);
    else
        tf_w_null(&w, "round");
    if (code != TF_OK) {
        tf_w_obj_begin(&w, "error");
        tf_w_str(&w, "code", tf_err_names[code]);
        tf_w_str(&w, "reason", reason);
        tf_w_obj_end(&w);
    }
    if (res != NULL && res->encoding != NULL) tf_w_str(&w, "encoding", res->encoding);
    if (res != NULL && res->has_local_layers) {
        tf_w_arr_begin(&w, "local-layers");
        for (int l = 0; l < 32; l++)
            if (res->local_mask & (1u << l)) tf_w_int(&w, NULL, l);
        tf_w_arr_end(&w);
    }
    return tf_frame_finish(&w, res != NULL ? res->tensors : NULL, res != NULL ? (size_t)res->n_tensors : 0);
}

static tf_agent_cache_slot *slot_at(tf_agent *a, uint32_t age) { /* age 0 = oldest */
    return &a->cache[(a->cache_head + age) % TF_AGENT_CACHE_ENTRIES];
}

static void evict_oldest(tf_agent *a) {
    a->cache_head = (a->cache_head + 1) % TF_AGENT_CACHE_ENTRIES;
    a->cache_count--;
}

static int overlaps_any(tf_agent *a, uint32_t pos, uint32_t len) {
    for (uint32_t k = 0; k < a->cache_count; k++) {
        const tf_agent_cache_slot *s = slot_at(a, k);
        if (pos < s->off + s->len && s->off < pos + len) return 1;
    }
    return 0;
}

/* Keep the reply in a->out under `key` (the last TF_AGENT_CACHE_ENTRIES replies that fit the arena). */
static void remember(tf_agent *a, const char *key, size_t len) {
    if (len == 0 || len > sizeof a->cache_bytes || strlen(key) >= sizeof a->cache[0].key) return;
    if (a->cache_count == TF_AGENT_CACHE_ENTRIES) evict_oldest(a);
    uint32_t pos = 0;
    if (a->cache_count > 0) {
        const tf_agent_cache_slot *newest = slot_at(a, a->cache_count - 1);
        pos = newest->off + newest->len;
        if (pos + len > sizeof a->cache_bytes) pos = 0;
    }
    while (a->cache_count > 0 && overlaps_any(a, pos, (uint32_t)len)) evict_oldest(a);
    tf_agent_cache_slot *s = slot_at(a, a->cache_count);
    a->cache_count++;
    strcpy(s->key, key);
    s->off = pos;
    s->len = (uint32_t)len;
    memcpy(a->cache_bytes + pos, a->out, len);
}

static const tf_agent_cache_slot *cached(tf_agent *a, const char *key) {
    for (uint32_t k = 0; k < a->cache_count; k++)
        if (strcmp(slot_at(a, k)->key, key) == 0) return slot_at(a, k);
    return NULL;
}

/* ------------------------------------------------------------------------------------ learning */
static const float *sample_x(const tf_agent *a, uint32_t i) { return a->x + (size_t)i * a->head.sizes[0]; }
static const float *sample_y(const tf_agent *a, uint32_t i) {
    return a->y + (size_t)i * a->head.sizes[a->head.n_layers];
}
static int32_t sample_label(const tf_agent *a, uint32_t i) {
    return a->head.kind == TF_CLASSIFICATION ? a->labels[i] : 0;
}

static void shuffle(tf_agent *a, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) a->perm[i] = i;
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = (uint32_t)(splitmix(&a->rng) % i);
        uint32_t t = a->perm[i - 1];
        a->perm[i - 1] = a->perm[j];
        a->perm[j] = t;
    }
}

typedef struct {
    double mean, mean_last, seconds;
} train_out;

/* learner.train: `steps` SGD steps over samples [0, n) in shuffled passes; restores the head and
 * returns -1 if a loss or a weight becomes NaN/inf (HeadDivergedError). anchor != NULL: FedProx
 * steps pulled toward it with lr_mu = lr * mu (MLPHead.sgd_steps with proximal_mu). */
static int train(tf_agent *a, uint32_t n, uint32_t steps, float lr, uint32_t mask, const float *anchor, float lr_mu,
                 train_out *out) {
    const uint32_t tail = n < steps ? n : steps;
    double total = 0.0, last_sum = 0.0, loss = 0.0;
    int finite = 1;
    double t0 = tf_platform_monotonic();
    memcpy(a->backup, a->head.params, sizeof(float) * a->head.n_params);
    for (uint32_t s = 0; s < steps;) {
        shuffle(a, n);
        for (uint32_t k = 0; k < n && s < steps; k++, s++) {
            uint32_t i = a->perm[k];
            loss = tf_head_sgd_step_prox(&a->head, sample_x(a, i), sample_y(a, i), sample_label(a, i), lr, mask,
                                         a->cfg.clip_norm, anchor, lr_mu);
            if (!isfinite(loss)) finite = 0;
            total += loss;
            if (s >= steps - tail) last_sum += loss;
        }
    }
    if (!finite || !tf_head_all_finite(&a->head)) {
        memcpy(a->head.params, a->backup, sizeof(float) * a->head.n_params);
        return -1;
    }
    a->samples_seen += steps;
    a->last_loss = loss;
    a->has_last_loss = 1;
    out->mean = total / steps;
    out->mean_last = last_sum / tail;
    out->seconds = tf_platform_monotonic() - t0;
    return 0;
}

typedef struct {
    double loss, metric;
    uint32_t n;
} eval_out;

/* head.evaluate on samples [start, start + n): mean loss and mse (= loss) or accuracy. */
static void evaluate(tf_agent *a, uint32_t start, uint32_t n, eval_out *out) {
    double loss = 0.0, correct = 0.0;
    const uint32_t n_out = a->head.sizes[a->head.n_layers];
    for (uint32_t i = start; i < start + n; i++) {
        loss += tf_head_loss(&a->head, sample_x(a, i), sample_y(a, i), sample_label(a, i));
        if (a->head.kind == TF_CLASSIFICATION) {
            const float *o = a->head.acts + a->head.a_off[a->head.n_layers];
            uint32_t best = 0;
            for (uint32_t j = 1; j < n_out; j++)
                if (o[j] > o[best]) best = j;
            correct += best == (uint32_t)a->labels[i];
        }
    }
    out->n = n;
    out->loss = loss / n;
    out->metric = a->head.kind == TF_CLASSIFICATION ? correct / n : out->loss;
}

static uint32_t eval_start(const tf_agent *a) { return a->n_eval ? a->n_train : 0; }
static uint32_t eval_count(const tf_agent *a) { return a->n_eval ? a->n_eval : a->n_samples; }
static const char *metric_name(const tf_agent *a) { return a->head.kind == TF_CLASSIFICATION ? "accuracy" : "mse"; }

/* _weights_from: the frame's tensors as head weights into dst; 0 = none, 1 = read, -1 = bad shape. */
static int weights_from(tf_agent *a, const tf_frame *f, float *dst, tf_error *err) {
    const tf_head *h = &a->head;
    if (f->n_tensors == 0) return 0;
    for (size_t i = 0; i < f->n_stored; i++)
        if (!tf_tensor_numpy_ok(&a->tensors[i])) { /* frame.arrays() fails in numpy: 'internal' */
            tf_error_set(err, TF_E_INTERNAL, &f->id, "internal error: ValueError: array is too big");
            return -2;
        }
    int ok = f->n_tensors == 2u * h->n_layers && f->n_stored == f->n_tensors;
    for (size_t i = 0; ok && i < f->n_tensors; i++) {
        const tf_tensor *t = &a->tensors[i];
        const int l = (int)(i / 2);
        if (i % 2 == 0)
            ok = t->ndim == 2 && t->shape[0] == h->sizes[l] && t->shape[1] == h->sizes[l + 1];
        else
            ok = t->ndim == 1 && t->shape[0] == h->sizes[l + 1];
    }
    if (!ok) {
        tf_error_set(err, TF_E_BAD_SHAPE, &f->id, tf_msg_names[f->type]);
        strcat(err->reason, ": weights do not have this device's head shapes");
        return -1;
    }
    size_t off = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        tf_tensor_to_f32(&a->tensors[i], dst + off);
        off += (size_t)a->tensors[i].size;
    }
    return 1;
}

static void layer_range(const tf_head *h, int l, uint32_t *start, uint32_t *count) {
    *start = h->w_off[l];
    *count = tf_head_layer_params(h, l);
}

/* Top-P of delta = phi - theta over one array: the k largest magnitudes (ties: lower index),
 * ascending indices; k = min(size, max(1, ceil(round(p * size, 6)))), as devices/wire/sparse.py. */
static uint32_t top_p(const float *phi, const float *theta, uint32_t size, double p, uint32_t *idx, float *val) {
    double r = nearbyint(p * size * 1e6) / 1e6;
    uint32_t k = (uint32_t)ceil(r);
    if (k < 1) k = 1;
    if (k > size) k = size;
    uint32_t lo = 0, hi = 0x7F800000u; /* largest T with #{|d| >= T} >= k, T over float bit patterns */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2, count = 0;
        for (uint32_t i = 0; i < size; i++) {
            float d = fabsf(phi[i] - theta[i]);
            uint32_t b;
            memcpy(&b, &d, 4);
            count += b >= mid;
        }
        if (count >= k) lo = mid;
        else hi = mid - 1;
    }
    uint32_t above = 0, n = 0;
    for (uint32_t i = 0; i < size; i++) {
        float d = fabsf(phi[i] - theta[i]);
        uint32_t b;
        memcpy(&b, &d, 4);
        above += b > lo;
    }
    uint32_t ties = k - above;
    for (uint32_t i = 0; i < size && n < k; i++) {
        float d = phi[i] - theta[i], m = fabsf(d);
        uint32_t b;
        memcpy(&b, &m, 4);
        if (b > lo || (b == lo && ties > 0)) {
            if (b == lo) ties--;
            idx[n] = i;
            val[n] = d;
            n++;
        }
    }
    return n;
}

static void set_tensor(const tf_head *h, tf_out_tensor *t, int array, const float *values) {
    static const char *const NAMES[] = {"w0", "b0", "w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "w5",
                                        "b5", "w6", "b6", "w7", "b7", "w8", "b8", "w9", "b9"};
    const int l = array / 2;
    t->name = array < 20 ? NAMES[array] : "w?";
    t->sparse = 0;
    t->nnz = 0;
    t->indices = NULL;
    t->values = values;
    if (array % 2 == 0) {
        t->ndim = 2;
        t->shape[0] = h->sizes[l];
        t->shape[1] = h->sizes[l + 1];
    } else {
        t->ndim = 1;
        t->shape[0] = h->sizes[l + 1];
    }
}

static uint32_t array_offset(const tf_head *h, int array) {
    return array % 2 == 0 ? h->w_off[array / 2] : h->b_off[array / 2];
}

static uint32_t local_layers(const tf_frame *f, int n_layers, int *bad) {
    tf_json list, item;
    uint32_t mask = 0;
    *bad = 0;
    if (!f->has_config || !tf_json_get(&f->config, "local-layers", &list) || list.type != TF_JSON_ARRAY) return 0;
    tf_json_iter it;
    tf_json_iter_init(&it, &list);
    while (tf_json_iter_next(&it, NULL, &item)) {
        tf_json_num num;
        tf_json_number(&item, &num);
        if (!num.int_fits || num.value_i >= n_layers) *bad = 1;
        else mask |= 1u << num.value_i;
    }
    if (mask == (1u << n_layers) - 1u) *bad = 1;
    return mask;
}

static double cfg_num(const tf_frame *f, const char *key, double fallback) {
    tf_json v;
    tf_json_num num;
    if (f->has_config && tf_json_get(&f->config, key, &v) && tf_json_number(&v, &num)) return num.value;
    return fallback;
}

static int cfg_has(const tf_frame *f, const char *key) {
    tf_json v;
    return f->has_config && tf_json_get(&f->config, key, &v);
}

static tf_err_code diverged(tf_error *err, const tf_frame *f, float lr) {
    (void)lr;
    tf_error_set(err, TF_E_BAD_CONFIG, &f->id, "head diverged (lower the learning rate or set clip_norm); "
                                             "weights left unchanged");
    return TF_E_BAD_CONFIG;
}

/* agent.clip_update: scale the update phi - theta of the layers in `mask` (all their arrays together)
 * to L2 norm <= c, Flower's fixedclipping_mod rule, in double as numpy does. The head keeps its
 * trained weights; the clipped ones go to a->backup. Returns 1 if it clipped. */
static int clip_update(tf_agent *a, uint32_t mask, double c) {
    const tf_head *h = &a->head;
    double sq = 0.0;
    for (int l = 0; l < h->n_layers; l++) {
        if (!(mask & (1u << l))) continue;
        uint32_t s, n;
        layer_range(h, l, &s, &n);
        for (uint32_t k = s; k < s + n; k++) {
            const double d = (double)h->params[k] - (double)a->theta[k];
            sq += d * d;
        }
    }
    const double norm = sqrt(sq), scale = norm > 0.0 && c / norm < 1.0 ? c / norm : 1.0;
    if (!(scale < 1.0)) return 0;
    for (int l = 0; l < h->n_layers; l++) {
        if (!(mask & (1u << l))) continue;
        uint32_t s, n;
        layer_range(h, l, &s, &n);
        for (uint32_t k = s; k < s + n; k++)
            a->backup[k] = (float)((double)a->theta[k] + ((double)h->params[k] - (double)a->theta[k]) * scale);
    }
    return 1;
}

/* ------------------------------------------------------------------------------------ tasks */
static tf_err_code do_train(tf_agent *a, const tf_frame *f, result *r, tf_error *err) {
    tf_head *h = &a->head;
    const int L = h->n_layers;
    int bad;
    uint32_t local = local_layers(f, L, &bad);
    if (bad) {
        tf_error_set(err, TF_E_BAD_CONFIG, &f->id, "local-layers must be a proper subset of the head's layers");
        return TF_E_BAD_CONFIG;
    }
    int got = weights_from(a, f, a->theta, err);
    if (got < 0) return err->code;
    if (cfg_has(f, "seed") && cfg_has(f, "server-round")) { /* reproducible order per (seed, device, round) */
        uint64_t s = (uint64_t)((int64_t)cfg_num(f, "seed", 0) & 0xFFFFFFFF);
        uint64_t mix = s ^ ((uint64_t)crc32_of(a->cfg.device_id) << 32);
        a->rng = mix;
        a->rng = splitmix(&a->rng) ^ (uint64_t)cfg_num(f, "server-round", 0);
    }
    if (got == 0) {
        tf_error_set(err, TF_E_BAD_SHAPE, &f->id, "task.train carries no weights");
        return TF_E_BAD_SHAPE;
    }
    memcpy(h->params, a->theta, sizeof(float) * h->n_params);
    for (int l = 0; l < L; l++) /* partial local reconstruction: personal layers never leave the device */
        if ((local & (1u << l)) && (a->personal_mask & (1u << l))) {
            uint32_t s, c;
            layer_range(h, l, &s, &c);
            memcpy(h->params + s, a->personal + s, sizeof(float) * c);
        }
    const uint32_t all = (1u << L) - 1u, global = all & ~local;
    const float lr = (float)cfg_num(f, "lr", a->cfg.lr);
    if (a->n_train == 0) {
        tf_error_set(err, TF_E_BAD_CONFIG, &f->id, "no samples");
        return TF_E_BAD_CONFIG;
    }
    train_out out;
    const uint32_t rec = (uint32_t)cfg_num(f, "reconstruct-steps", 0);
    if (local && rec > 0) {
        if (train(a, a->n_train, rec, lr, local, NULL, 0.0f, &out) < 0) return diverged(err, f, lr);
        add_metric(r, "reconstruct-loss", out.mean);
    }
    const uint32_t steps = (uint32_t)cfg_num(f, "local-steps", 1);
    /* FedProx: the anchor is the head this call starts from; for the layers it trains that is theta */
    const double mu = cfg_num(f, "proximal-mu", 0.0);
    const float lr_mu = (float)(cfg_num(f, "lr", a->cfg.lr) * mu); /* numpy: two Python floats, then float32 */
    if (train(a, a->n_train, steps, lr, local ? global : all, mu > 0.0 ? a->theta : NULL, lr_mu, &out) < 0)
        return diverged(err, f, lr);
    for (int l = 0; l < L; l++)
        if (local & (1u << l)) {
            uint32_t s, c;
            layer_range(h, l, &s, &c);
            memcpy(a->personal + s, h->params + s, sizeof(float) * c);
            a->personal_mask |= 1u << l;
        }
    add_metric(r, "num-examples", steps);
    add_metric(r, "train-loss", out.mean);
    add_metric(r, "train-loss-last", out.mean_last);
    add_metric(r, "train-seconds", out.seconds);
    const float *phi = h->params; /* what travels: the trained head, or its clipped update in a->backup */
    if (cfg_has(f, "clipping_norm")) {
        const int clipped = clip_update(a, global, cfg_num(f, "clipping_norm", 1.0));
        if (clipped) phi = a->backup;
        add_metric(r, "norm_bit", clipped ? 1.0 : 0.0);
    }
    const int sparse = cfg_has(f, "top-p");
    const double p = cfg_num(f, "top-p", 1.0);
    uint32_t used = 0;
    for (int i = 0; i < 2 * L; i++) {
        if (!(global & (1u << (i / 2)))) continue;
        tf_out_tensor *t = &r->tensors[r->n_tensors++];
        const uint32_t off = array_offset(h, i);
        set_tensor(h, t, i, phi + off);
        if (sparse) {
            const uint32_t size = i % 2 == 0 ? (uint32_t)h->sizes[i / 2] * h->sizes[i / 2 + 1] : h->sizes[i / 2 + 1];
            t->sparse = 1;
            t->indices = a->top_idx + used;
            t->values = a->top_val + used;
            t->nnz = top_p(phi + off, a->theta + off, size, p, a->top_idx + used, a->top_val + used);
            used += t->nnz;
        }
    }
    if (sparse) add_metric(r, "top-p", p);
    r->encoding = sparse ? "delta" : "weights";
    r->has_local_layers = 1;
    r->local_mask = local;
    return TF_OK;
}

static void add_eval(result *r, const tf_agent *a, const eval_out *e) {
    add_metric(r, "loss", e->loss);
    add_metric(r, metric_name(a), e->metric);
    add_metric(r, "num-examples", e->n);
}

static tf_err_code do_evaluate(tf_agent *a, const tf_frame *f, result *r, tf_error *err) {
    tf_head *h = &a->head;
    int got = weights_from(a, f, a->theta, err);
    if (got < 0) return err->code;
    int bad; /* the decoder has checked local-layers is a list of integers >= 0 */
    uint32_t local = got ? local_layers(f, h->n_layers, &bad) : 0;
    memcpy(a->backup, h->params, sizeof(float) * h->n_params);
    if (got) {
        memcpy(h->params, a->theta, sizeof(float) * h->n_params);
        for (int l = 0; l < h->n_layers; l++) /* TinyMetaFed: evaluate with the device's own local layers */
            if ((local & (1u << l)) && (a->personal_mask & (1u << l))) {
                uint32_t s, c;
                layer_range(h, l, &s, &c);
                memcpy(h->params + s, a->personal + s, sizeof(float) * c);
            }
    }
    eval_out e;
    evaluate(a, eval_start(a), eval_count(a), &e);
    memcpy(h->params, a->backup, sizeof(float) * h->n_params);
    add_eval(r, a, &e);
    return TF_OK;
}

static tf_err_code do_adapt(tf_agent *a, const tf_frame *f, result *r, tf_error *err) {
    tf_head *h = &a->head;
    const uint32_t shots = (uint32_t)cfg_num(f, "shots", 1);
    if (shots > a->n_train) {
        tf_error_set(err, TF_E_BAD_CONFIG, &f->id, "task.adapt asks for more shots than the device has samples");
        return TF_E_BAD_CONFIG;
    }
    int got = weights_from(a, f, a->theta, err);
    if (got < 0) return err->code;
    if (got) memcpy(h->params, a->theta, sizeof(float) * h->n_params);
    const uint32_t steps = (uint32_t)cfg_num(f, "steps", 0);
    eval_out before, after, held;
    evaluate(a, 0, shots, &before); /* learner.adapt: the shots' loss before and after the steps */
    if (steps > 0) {
        const float lr = (float)cfg_num(f, "lr", a->cfg.lr);
        train_out out;
        if (train(a, shots, steps, lr, (1u << h->n_layers) - 1u, NULL, 0.0f, &out) < 0) return diverged(err, f, lr);
        evaluate(a, 0, shots, &after);
        add_metric(r, "train-loss", out.mean);
        add_metric(r, "train-loss-last", out.mean_last);
        add_metric(r, "train-seconds", out.seconds);
    } else {
        after = before;
    }
    add_metric(r, "num-examples", shots);
    add_metric(r, "shots", shots);
    add_metric(r, "loss-before", before.loss);
    add_metric(r, "loss-after", after.loss);
    evaluate(a, eval_start(a), eval_count(a), &held); /* the adapted head on the held-out samples */
    add_metric(r, "loss", held.loss);
    add_metric(r, metric_name(a), held.metric);
    for (int i = 0; i < 2 * h->n_layers; i++) set_tensor(h, &r->tensors[r->n_tensors++], i, h->params + array_offset(h, i));
    r->encoding = "weights";
    return TF_OK;
}

/* ------------------------------------------------------------------------------------ handle */
static void append(char *buf, size_t cap, const char *s) { /* bounded strcat */
    size_t n = strlen(buf);
    while (*s && n + 1 < cap) buf[n++] = *s++;
    buf[n] = '\0';
}

/* agent._check_required: a task whose `required` lists a config key this device does not implement
 * is refused with unsupported-config rather than run as something else (e.g. FedProx without its
 * proximal term). Implemented = every key the codec checks for that task type, as in Python. */
static int unsupported_required(const tf_frame *f, tf_error *err) {
    tf_json list, item;
    if (!f->has_config || !tf_json_get(&f->config, "required", &list) || list.type != TF_JSON_ARRAY) return 0;
    char reason[TF_REASON_BYTES] = "", name[72 * 4];
    append(reason, sizeof reason, tf_msg_names[f->type]);
    append(reason, sizeof reason, ": this device does not implement the required config key(s) ");
    int missing = 0;
    tf_json_iter it;
    tf_json_iter_init(&it, &list);
    while (tf_json_iter_next(&it, NULL, &item)) { /* the decoder checked: strings of 1-64 characters */
        if (tf_config_key_known(f->type, &item)) continue;
        if (!tf_json_str_copy(&item, name, sizeof name)) strcpy(name, "?");
        if (missing++) append(reason, sizeof reason, ", ");
        append(reason, sizeof reason, name);
    }
    if (missing) tf_error_set(err, TF_E_UNSUPPORTED_CONFIG, &f->id, reason);
    return missing;
}

static size_t refuse(tf_agent *a, const tf_frame *req, const tf_json *rid, int task, tf_err_code code,
                     const char *reason, const char *cache_key) {
    size_t n = build_reply(a, req, rid, task, NULL, code, reason);
    if (n == 0 && req != NULL) { /* an echoed run id too long for this device's buffer: answer without it */
        tf_frame bare = *req;
        bare.has_run = bare.has_round = 0;
        n = build_reply(a, &bare, rid, task, NULL, code, reason);
    }
    a->errors_sent++;
    tf_platform_log("warning", reason);
    if (cache_key != NULL) remember(a, cache_key, n);
    return n;
}

size_t tf_agent_handle(tf_agent *a, const uint8_t *payload, size_t n, size_t max_packet, const uint8_t **reply) {
    static tf_frame f;
    static tf_error err;
    static char key[516];
    *reply = a->out;
    if (n > a->cfg.max_task_bytes) {
        tf_json rid;
        int has = tf_frame_peek_id(payload, n < 4 + TF_MAX_HEADER_BYTES ? n : 4 + TF_MAX_HEADER_BYTES, &rid);
        return refuse(a, NULL, has ? &rid : NULL, -1, TF_E_TOO_LARGE, "task exceeds this device's size limit", NULL);
    }
    tf_scratch scratch = {a->sparse_bits, TF_AGENT_SPARSE_CHECK_ENTRIES};
    tf_err_code rc = tf_frame_decode(payload, n, a->cfg.max_task_bytes, &f, a->tensors, TF_AGENT_MAX_TENSORS,
                                     scratch, &err);
    if (rc != TF_OK) return refuse(a, NULL, err.has_rid ? &err.rid : NULL, -1, rc, err.reason, NULL);
    tf_json_str_copy(&f.id, key, sizeof key);
    const tf_agent_cache_slot *hit = cached(a, key);
    if (hit != NULL) {
        tf_platform_log("info", "duplicate task: re-sending the cached reply");
        *reply = a->cache_bytes + hit->off;
        return hit->len;
    }
    if (f.type == TF_MSG_RESULT)
        return refuse(a, &f, &f.id, f.type, TF_E_UNKNOWN_TYPE, "a device does not accept results on its task topic",
                      key);
    if (unsupported_required(&f, &err)) return refuse(a, &f, &f.id, f.type, err.code, err.reason, key);
    if (f.type == TF_MSG_DEPLOY)
        return refuse(a, &f, &f.id, f.type, TF_E_UNKNOWN_TYPE,
                      "task.deploy is not supported by the C agent (its backbone is flashed with the firmware)", key);
    for (size_t i = 0; i < f.n_stored; i++)
        if (!tf_tensor_all_finite(&a->tensors[i])) {
            char reason[96] = "a tensor of ";
            strcat(reason, tf_msg_names[f.type]);
            strcat(reason, " contains NaN or infinity");
            return refuse(a, &f, &f.id, f.type, TF_E_NOT_FINITE, reason, key);
        }
    static result r;
    memset(&r, 0, sizeof r);
    rc = f.type == TF_MSG_TRAIN ? do_train(a, &f, &r, &err)
         : f.type == TF_MSG_EVALUATE ? do_evaluate(a, &f, &r, &err)
                                     : do_adapt(a, &f, &r, &err);
    if (rc != TF_OK) return refuse(a, &f, &f.id, f.type, rc, err.reason, key);
    for (int i = 0; i < r.n_metrics; i++) /* Python's json.dumps(allow_nan=False) raises: 'internal' */
        if (!isfinite(r.metrics[i].value))
            return refuse(a, &f, &f.id, f.type, TF_E_INTERNAL,
                          "internal error: ValueError: Out of range float values are not JSON compliant", key);
    size_t len = build_reply(a, &f, &f.id, f.type, &r, TF_OK, "");
    if (len == 0) return refuse(a, &f, &f.id, f.type, TF_E_TOO_LARGE, "reply exceeds this device's buffer", key);
    if (max_packet != 0 && len + 512 > max_packet) { /* as the Python agent: no run/round in the replacement */
        tf_frame bare = f;
        bare.has_run = bare.has_round = 0;
        return refuse(a, &bare, &f.id, f.type, TF_E_TOO_LARGE, "reply exceeds the broker's maximum packet size",
                      key);
    }
    a->tasks_done++;
    remember(a, key, len);
    return len;
}

/* ------------------------------------------------------------------------------------ documents */
size_t tf_agent_presence(const tf_agent *a, int online, const char *reason, uint8_t *buf, size_t cap) {
    tf_writer w;
    tf_w_init(&w, buf, cap);
    tf_w_obj_begin(&w, NULL);
    tf_w_int(&w, "v", TF_PROTOCOL_VERSION);
    tf_w_str(&w, "type", "presence");
    tf_w_str(&w, "device", a->cfg.device_id);
    tf_w_str(&w, "fleet", a->cfg.fleet);
    tf_w_bool(&w, "online", online);
    tf_w_num(&w, "ts", floor(tf_platform_unix_time() * 1000.0 + 0.5) / 1000.0);
    if (a->cfg.board != NULL && a->cfg.board[0]) tf_w_str(&w, "board", a->cfg.board);
    if (reason != NULL) tf_w_str(&w, "reason", reason);
    tf_w_obj_end(&w);
    return w.overflow ? 0 : w.len;
}

size_t tf_agent_telemetry(const tf_agent *a, uint8_t *buf, size_t cap) {
    tf_writer w;
    char sha[65];
    tf_sha256_hex(a->head.params, sizeof(float) * a->head.n_params, sha); /* little-endian float32, as numpy */
    tf_w_init(&w, buf, cap);
    tf_w_obj_begin(&w, NULL);
    tf_w_int(&w, "v", TF_PROTOCOL_VERSION);
    tf_w_str(&w, "type", "telemetry");
    tf_w_str(&w, "device", a->cfg.device_id);
    tf_w_num(&w, "ts", floor(tf_platform_unix_time() * 1000.0 + 0.5) / 1000.0);
    if (a->has_last_loss)
        tf_w_num(&w, "loss", a->last_loss);
    else
        tf_w_null(&w, "loss");
    tf_w_int(&w, "samples-seen", (int64_t)a->samples_seen);
    tf_w_int(&w, "tasks-done", (int64_t)a->tasks_done);
    if (a->cfg.memory_bytes >= 0) tf_w_int(&w, "memory-bytes", a->cfg.memory_bytes);
    tf_w_int(&w, "ram-bytes", a->cfg.ram_bytes);
    tf_w_int(&w, "flash-bytes", a->cfg.flash_bytes);
    tf_w_null(&w, "model-sha256");
    tf_w_str(&w, "head-sha256", sha);
    tf_w_num(&w, "uptime-s", floor((tf_platform_monotonic() - a->started) * 1000.0 + 0.5) / 1000.0);
    if (a->cfg.n_sensors > 0 && a->n_train > 0) { /* mean of the sample the learner is at */
        const uint32_t n_in = a->head.sizes[0];
        const float *x = sample_x(a, (uint32_t)(a->samples_seen % a->n_train));
        double mean = 0.0;
        for (uint32_t i = 0; i < n_in; i++) mean += x[i];
        tf_w_obj_begin(&w, "sensors");
        for (int s = 0; s < a->cfg.n_sensors; s++) tf_w_num(&w, a->cfg.sensors[s], mean / n_in);
        tf_w_obj_end(&w);
    }
    tf_w_obj_end(&w);
    return w.overflow ? 0 : w.len;
}
