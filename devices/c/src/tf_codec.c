/* tf_codec: see tf_codec.h. The checks follow devices/wire/frames.py line by line (same order,
 * same error codes), so a C device refuses exactly the frames a Python device refuses. */
#include "tf_codec.h"

#include <math.h>
#include <string.h>

const char *const tf_msg_names[TF_MSG_COUNT] = {"task.train", "task.evaluate", "task.deploy", "task.adapt",
                                                "result"};
const char *const tf_err_names[TF_E_COUNT] = {
    "",           "bad-version",  "malformed", "unknown-type",     "bad-config",   "bad-shape", "not-finite",
    "too-large",  "no-model",     "sha-mismatch", "self-test-failed", "does-not-fit",
    "unsupported-config", "internal"};
const char *const tf_dtype_names[TF_DTYPE_COUNT] = {"float32", "float64", "float16", "int8",   "uint8",
                                                    "int16",   "uint16",  "int32",   "uint32", "int64"};
const uint8_t tf_dtype_size[TF_DTYPE_COUNT] = {4, 8, 2, 1, 1, 2, 2, 4, 4, 8};

/* ------------------------------------------------------------------------------------ errors */
static void cat(char *buf, const char *s) {
    size_t n = strlen(buf), k = strlen(s);
    if (n + k >= TF_REASON_BYTES) k = TF_REASON_BYTES - 1 - n;
    memcpy(buf + n, s, k);
    buf[n + k] = '\0';
}

static void cat_u64(char *buf, uint64_t v) {
    char tmp[24];
    int i = 23;
    tmp[i] = '\0';
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    cat(buf, tmp + i);
}

static void cat_str(char *buf, const tf_json *s) { /* a string value, truncated, without quotes */
    char tmp[48];
    if (s->type != TF_JSON_STRING) {
        cat(buf, "?");
        return;
    }
    size_t k = tf_json_str_prefix(s, 32, tmp, sizeof tmp);
    if (k > sizeof tmp || k < 2) return;
    tmp[k - 1] = '\0';
    cat(buf, tmp + 1);
}

void tf_error_set(tf_error *err, tf_err_code code, const tf_json *rid, const char *reason) {
    err->code = code;
    err->has_rid = rid != NULL && rid->type == TF_JSON_STRING;
    if (err->has_rid) err->rid = *rid;
    err->reason[0] = '\0';
    cat(err->reason, reason);
}

/* ------------------------------------------------------------------------------------ helpers */
static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Python's is_int(x, lo): a JSON integer literal (not bool) >= lo; *big = 1 if it exceeds int64. */
static int is_int(const tf_json *v, int64_t lo, int64_t *out, int *big) {
    tf_json_num num;
    if (!tf_json_number(v, &num) || !num.is_int) return 0;
    if (!num.int_fits) {
        if (num.value < 0) return 0;
        if (big) *big = 1;
        if (out) *out = INT64_MAX;
        return 1;
    }
    if (big) *big = 0;
    if (out) *out = num.value_i;
    return num.value_i >= lo;
}

static int is_number(const tf_json *v, double *out) { /* finite JSON number, bool excluded */
    tf_json_num num;
    if (!tf_json_number(v, &num) || !isfinite(num.value)) return 0;
    if (out) *out = num.value;
    return 1;
}

static int hashable(const tf_json *v) { return v->type != TF_JSON_ARRAY && v->type != TF_JSON_OBJECT; }

static int dtype_of(const tf_json *v) {
    if (v->type != TF_JSON_STRING) return -1;
    for (int i = 0; i < TF_DTYPE_COUNT; i++)
        if (tf_json_str_eq(v, tf_dtype_names[i])) return i;
    return -1;
}

/* ------------------------------------------------------------------------------------ config */
typedef enum { R_INT0, R_INT1, R_NUMPOS, R_NUMNONNEG, R_SEED, R_FRACTION, R_INTLIST, R_KEYLIST, R_ARTIFACT,
               R_SHA256 } rule_kind;
typedef struct {
    const char *key;
    rule_kind rule;
    int required;
} rule;

/* devices/wire/frames.py _CONFIG_RULES, key by key and in its order (the first broken rule is reported). */
static const rule TRAIN_RULES[] = {{"server-round", R_INT0, 0},       {"local-steps", R_INT1, 1},
                                   {"lr", R_NUMPOS, 1},                {"top-p", R_FRACTION, 0},
                                   {"local-layers", R_INTLIST, 0},     {"reconstruct-steps", R_INT0, 0},
                                   {"seed", R_SEED, 0},                {"proximal-mu", R_NUMNONNEG, 0},
                                   {"clipping_norm", R_NUMPOS, 0},     {"required", R_KEYLIST, 0}};
static const rule EVAL_RULES[] = {{"server-round", R_INT0, 0}, {"seed", R_SEED, 0}, {"local-layers", R_INTLIST, 0},
                                  {"required", R_KEYLIST, 0}};
static const rule ADAPT_RULES[] = {{"shots", R_INT1, 1},        {"steps", R_INT0, 1},       {"lr", R_NUMPOS, 0},
                                   {"server-round", R_INT0, 0}, {"required", R_KEYLIST, 0}};
static const rule DEPLOY_RULES[] = {{"artifact", R_ARTIFACT, 1}, {"sha256", R_SHA256, 1},     {"size", R_INT1, 1},
                                    {"chunk-index", R_INT0, 1},  {"chunk-count", R_INT1, 1},  {"arena-bytes", R_INT0, 0},
                                    {"required", R_KEYLIST, 0}};

static const rule *rules_of(tf_msg_type type, size_t *n) {
    switch (type) {
        case TF_MSG_TRAIN: *n = sizeof TRAIN_RULES / sizeof *TRAIN_RULES; return TRAIN_RULES;
        case TF_MSG_EVALUATE: *n = sizeof EVAL_RULES / sizeof *EVAL_RULES; return EVAL_RULES;
        case TF_MSG_ADAPT: *n = sizeof ADAPT_RULES / sizeof *ADAPT_RULES; return ADAPT_RULES;
        case TF_MSG_DEPLOY: *n = sizeof DEPLOY_RULES / sizeof *DEPLOY_RULES; return DEPLOY_RULES;
        default: *n = 0; return NULL;
    }
}

int tf_config_key_known(tf_msg_type type, const tf_json *key) {
    size_t n;
    const rule *rules = rules_of(type, &n);
    for (size_t k = 0; k < n; k++)
        if (tf_json_str_eq(key, rules[k].key)) return 1;
    return 0;
}

static int rule_ok(rule_kind r, const tf_json *v) {
    int64_t i;
    int big = 0;
    double x;
    switch (r) {
        case R_INT0: return is_int(v, 0, &i, &big) && !big && i <= (int64_t)TF_MAX_STEPS * 1000;
        case R_INT1: return is_int(v, 1, &i, &big) && !big && i <= ((int64_t)1 << 40);
        case R_NUMPOS: return is_number(v, &x) && x > 0 && x <= 1e3;
        case R_NUMNONNEG: return is_number(v, &x) && x >= 0 && x <= 1e3;
        case R_SEED: return is_int(v, 0, &i, &big) && !big; /* 0 .. 2^63 - 1 */
        case R_KEYLIST: {
            if (v->type != TF_JSON_ARRAY || tf_json_count(v) > 64) return 0;
            tf_json_iter it;
            tf_json item;
            tf_json_iter_init(&it, v);
            while (tf_json_iter_next(&it, NULL, &item)) {
                const size_t len = tf_json_str_len(&item); /* code points, as Python's len */
                if (item.type != TF_JSON_STRING || len < 1 || len > 64) return 0;
            }
            return 1;
        }
        case R_FRACTION: return is_number(v, &x) && x > 0 && x <= 1;
        case R_INTLIST: {
            if (v->type != TF_JSON_ARRAY || tf_json_count(v) > 64) return 0;
            tf_json_iter it;
            tf_json item;
            tf_json_iter_init(&it, v);
            while (tf_json_iter_next(&it, NULL, &item))
                if (!is_int(&item, 0, NULL, NULL)) return 0;
            return 1;
        }
        case R_ARTIFACT: return tf_json_str_eq(v, "backbone.tflite") || tf_json_str_eq(v, "model.tflite");
        case R_SHA256: {
            if (v->type != TF_JSON_STRING || v->n != 66) return 0;
            for (size_t k = 1; k < 65; k++) {
                char c = v->p[k];
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
            }
            return 1;
        }
    }
    return 0;
}

static tf_err_code check_config(tf_msg_type type, const tf_json *cfg, const tf_json *rid, tf_error *err) {
    size_t n;
    const rule *rules = rules_of(type, &n);
    for (size_t k = 0; k < n; k++) {
        tf_json v;
        int has = cfg != NULL && tf_json_get(cfg, rules[k].key, &v);
        if (!has) {
            if (rules[k].required) {
                tf_error_set(err, TF_E_BAD_CONFIG, rid, tf_msg_names[type]);
                cat(err->reason, ": config key '");
                cat(err->reason, rules[k].key);
                cat(err->reason, "' is required");
                return TF_E_BAD_CONFIG;
            }
            continue;
        }
        if (!rule_ok(rules[k].rule, &v)) {
            tf_error_set(err, TF_E_BAD_CONFIG, rid, tf_msg_names[type]);
            cat(err->reason, ": config '");
            cat(err->reason, rules[k].key);
            cat(err->reason, "' is invalid");
            return TF_E_BAD_CONFIG;
        }
    }
    static const char *const STEP_KEYS[] = {"local-steps", "steps", "reconstruct-steps"};
    for (size_t k = 0; k < 3 && cfg != NULL; k++) {
        tf_json v;
        if (type == TF_MSG_DEPLOY || !tf_json_get(cfg, STEP_KEYS[k], &v)) continue;
        if (v.type == TF_JSON_TRUE || v.type == TF_JSON_FALSE) continue; /* bool > 100000 is False */
        tf_json_num num;
        if (!tf_json_number(&v, &num)) { /* Python: '>' between str/list/None and int: TypeError */
            tf_error_set(err, TF_E_INTERNAL, NULL, "internal error: TypeError: '>' not supported for config '");
            cat(err->reason, STEP_KEYS[k]);
            cat(err->reason, "'");
            return TF_E_INTERNAL;
        }
        if (num.value > TF_MAX_STEPS) {
            tf_error_set(err, TF_E_BAD_CONFIG, rid, tf_msg_names[type]);
            cat(err->reason, ": config '");
            cat(err->reason, STEP_KEYS[k]);
            cat(err->reason, "' exceeds 100000");
            return TF_E_BAD_CONFIG;
        }
    }
    if (type == TF_MSG_DEPLOY) {
        tf_json a, b;
        int64_t ia = 0, ib = 0;
        tf_json_get(cfg, "chunk-index", &a);
        tf_json_get(cfg, "chunk-count", &b);
        is_int(&a, 0, &ia, NULL);
        is_int(&b, 0, &ib, NULL);
        if (ia >= ib) {
            tf_error_set(err, TF_E_BAD_CONFIG, rid, "task.deploy: chunk-index is not below chunk-count");
            return TF_E_BAD_CONFIG;
        }
    }
    return TF_OK;
}

static tf_err_code check_result_header(const tf_json *h, const tf_json *rid, tf_error *err) {
    tf_json v;
    if (tf_json_get(h, "reply-to", &v) && v.type != TF_JSON_NULL && v.type != TF_JSON_STRING) {
        tf_error_set(err, TF_E_MALFORMED, rid, "result field 'reply-to' must be a string or null");
        return TF_E_MALFORMED;
    }
    int ok_true = 0;
    if (!tf_json_get(h, "ok", &v) || (v.type != TF_JSON_TRUE && v.type != TF_JSON_FALSE)) {
        tf_error_set(err, TF_E_MALFORMED, rid, "result field 'ok' must be true or false");
        return TF_E_MALFORMED;
    }
    ok_true = v.type == TF_JSON_TRUE;
    if (!tf_json_get(h, "device", &v) || v.type != TF_JSON_STRING) {
        tf_error_set(err, TF_E_MALFORMED, rid, "result field 'device' must be a string");
        return TF_E_MALFORMED;
    }
    if (tf_json_get(h, "metrics", &v)) {
        int good = v.type == TF_JSON_OBJECT;
        tf_json_iter it;
        tf_json k, x;
        if (good) {
            tf_json_iter_init(&it, &v);
            while (tf_json_iter_next(&it, &k, &x))
                if (!is_number(&x, NULL)) good = 0;
        }
        if (!good) {
            tf_error_set(err, TF_E_MALFORMED, rid, "result field 'metrics' must map names to finite numbers");
            return TF_E_MALFORMED;
        }
    }
    if (!ok_true) {
        tf_json e, c, r;
        if (!(tf_json_get(h, "error", &e) && e.type == TF_JSON_OBJECT && tf_json_get(&e, "code", &c) &&
              c.type == TF_JSON_STRING && tf_json_get(&e, "reason", &r) && r.type == TF_JSON_STRING)) {
            tf_error_set(err, TF_E_MALFORMED, rid, "failed result needs 'error': {'code': str, 'reason': str}");
            return TF_E_MALFORMED;
        }
    }
    return TF_OK;
}

/* ------------------------------------------------------------------------------------ tensors */
static tf_err_code tensor_fail(tf_error *err, const tf_json *rid, const tf_json *name, const char *what) {
    tf_error_set(err, TF_E_MALFORMED, rid, "tensor '");
    cat_str(err->reason, name);
    cat(err->reason, "': ");
    cat(err->reason, what);
    return TF_E_MALFORMED;
}

int tf_tensor_numpy_ok(const tf_tensor *t) {
    uint64_t bytes = tf_dtype_size[t->dtype];
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) continue;
        if (t->shape[d] > (uint64_t)INT64_MAX || bytes > (uint64_t)INT64_MAX / t->shape[d]) return 0;
        bytes *= t->shape[d];
    }
    return 1;
}

static uint64_t index_at(const tf_tensor *t, uint64_t i) {
    const uint8_t *p = t->data + (t->index_u16 ? 2 * i : 4 * i);
    return t->index_u16 ? (uint64_t)(p[0] | (p[1] << 8)) : (uint64_t)rd_u32(p);
}

static tf_err_code read_tensor(const tf_json *e, const uint8_t *data, size_t data_len, const tf_json *rid,
                               tf_tensor *t, tf_scratch scratch, tf_error *err) {
    tf_json v;
    if (!tf_json_get(e, "name", &t->name) || t->name.type != TF_JSON_STRING) {
        tf_error_set(err, TF_E_MALFORMED, rid, "a tensor entry has no string 'name'");
        return TF_E_MALFORMED;
    }
    int has_dtype = tf_json_get(e, "dtype", &v);
    if (has_dtype && !hashable(&v)) { /* Python: DTYPES.get(list) raises TypeError */
        tf_error_set(err, TF_E_INTERNAL, NULL, "internal error: TypeError: unhashable dtype");
        return TF_E_INTERNAL;
    }
    int dt = has_dtype ? dtype_of(&v) : -1;
    if (dt < 0) return tensor_fail(err, rid, &t->name, "unsupported dtype");
    t->dtype = (tf_dtype)dt;
    tf_json shape;
    if (!tf_json_get(e, "shape", &shape) || shape.type != TF_JSON_ARRAY || tf_json_count(&shape) > TF_MAX_DIMS)
        return tensor_fail(err, rid, &t->name, "shape must be a list of at most 8 integers >= 0");
    tf_json_iter it;
    tf_json dim;
    int big_size = 0, zero = 0;
    uint64_t size = 1;
    t->ndim = 0;
    tf_json_iter_init(&it, &shape);
    while (tf_json_iter_next(&it, NULL, &dim)) {
        int64_t d;
        int big = 0;
        if (!is_int(&dim, 0, &d, &big)) return tensor_fail(err, rid, &t->name, "shape must be a list of integers >= 0");
        t->shape[t->ndim++] = big ? UINT64_MAX : (uint64_t)d;
        if (big || (d != 0 && size > UINT64_MAX / (uint64_t)d)) big_size = 1;
        if (!big && d == 0) zero = 1;
        if (!big && d != 0 && !big_size) size *= (uint64_t)d;
    }
    if (zero) big_size = 0, size = 0;
    t->size = big_size ? UINT64_MAX : size;
    tf_json jo, jn;
    int64_t off, nbytes;
    int bo = 0, bn = 0;
    if (!(tf_json_get(e, "offset", &jo) && is_int(&jo, 0, &off, &bo) && tf_json_get(e, "nbytes", &jn) &&
          is_int(&jn, 0, &nbytes, &bn) && !bo && !bn && (uint64_t)off + (uint64_t)nbytes <= data_len))
        return tensor_fail(err, rid, &t->name, "offset/nbytes outside the data section");
    t->data = data + off;
    t->nbytes = (size_t)nbytes;
    t->sparse = 0;
    t->index_u16 = 0;
    t->nnz = 0;
    uint64_t item = tf_dtype_size[dt];
    tf_json enc;
    int is_dense = !tf_json_get(e, "encoding", &enc) || tf_json_str_eq(&enc, "dense");
    if (is_dense) {
        if (big_size || t->size > UINT64_MAX / item || t->size * item != (uint64_t)nbytes)
            return tensor_fail(err, rid, &t->name, "nbytes do not hold its shape");
        if (!tf_tensor_numpy_ok(t)) { /* numpy's reshape refuses it: Python answers 'internal' */
            tf_error_set(err, TF_E_INTERNAL, NULL, "internal error: ValueError: array is too big");
            return TF_E_INTERNAL;
        }
        return TF_OK;
    }
    if (!tf_json_str_eq(&enc, "sparse")) return tensor_fail(err, rid, &t->name, "unknown encoding (dense or sparse)");
    t->sparse = 1;
    tf_json idt;
    if (tf_json_get(e, "index_dtype", &idt)) {
        if (tf_json_str_eq(&idt, "uint16")) t->index_u16 = 1;
        else if (!tf_json_str_eq(&idt, "uint32"))
            return tensor_fail(err, rid, &t->name, "sparse index_dtype must be uint16 or uint32");
    }
    if (t->index_u16 && t->size > TF_UINT16_MAX_ENTRIES)
        return tensor_fail(err, rid, &t->name, "uint16 indices cannot address its shape");
    tf_json jz;
    int64_t nnz;
    int bz = 0;
    if (!(tf_json_get(e, "nnz", &jz) && is_int(&jz, 0, &nnz, &bz) && !bz && (uint64_t)nnz <= t->size))
        return tensor_fail(err, rid, &t->name, "sparse nnz does not match its bytes / shape");
    uint64_t idx_bytes = (uint64_t)nnz * (t->index_u16 ? 2u : 4u);
    uint64_t want = idx_bytes + ((4 - idx_bytes % 4) % 4) + (uint64_t)nnz * item;
    if (want != (uint64_t)nbytes) return tensor_fail(err, rid, &t->name, "sparse nnz does not match its bytes / shape");
    t->nnz = (uint64_t)nnz;
    /* indices in range, then unique (exactly with the bitmap, else ascending) */
    for (uint64_t i = 0; i < t->nnz; i++)
        if (index_at(t, i) >= t->size)
            return tensor_fail(err, rid, &t->name, "sparse indices out of range or repeated");
    if (t->nnz > 1 && t->size <= scratch.n_bits && scratch.bits != NULL) {
        memset(scratch.bits, 0, (size_t)((t->size + 7) / 8));
        for (uint64_t i = 0; i < t->nnz; i++) {
            uint64_t k = index_at(t, i);
            if (scratch.bits[k / 8] & (1u << (k % 8)))
                return tensor_fail(err, rid, &t->name, "sparse indices out of range or repeated");
            scratch.bits[k / 8] |= (uint8_t)(1u << (k % 8));
        }
    } else if (t->nnz > 1) {
        for (uint64_t i = 1; i < t->nnz; i++) {
            uint64_t a = index_at(t, i - 1), b = index_at(t, i);
            if (a == b) return tensor_fail(err, rid, &t->name, "sparse indices out of range or repeated");
            if (a > b) {
                tf_error_set(err, TF_E_TOO_LARGE, rid, "tensor '");
                cat_str(err->reason, &t->name);
                cat(err->reason, "': unsorted sparse indices of a tensor larger than this device checks");
                return TF_E_TOO_LARGE;
            }
        }
    }
    return TF_OK;
}

/* ------------------------------------------------------------------------------------ decode */
tf_err_code tf_frame_decode(const uint8_t *buf, size_t n, size_t max_bytes, tf_frame *f, tf_tensor *tensors,
                            size_t max_tensors, tf_scratch scratch, tf_error *err) {
    memset(f, 0, sizeof *f);
    if (n > max_bytes) {
        tf_error_set(err, TF_E_TOO_LARGE, NULL, "frame of ");
        cat_u64(err->reason, n);
        cat(err->reason, " bytes exceeds the limit of ");
        cat_u64(err->reason, max_bytes);
        cat(err->reason, " bytes");
        return TF_E_TOO_LARGE;
    }
    if (n < 4) {
        tf_error_set(err, TF_E_MALFORMED, NULL, "frame is shorter than its 4-byte length prefix");
        return TF_E_MALFORMED;
    }
    uint32_t hlen = rd_u32(buf);
    if (hlen > TF_MAX_HEADER_BYTES || (uint64_t)hlen + 4 > n) {
        tf_error_set(err, TF_E_MALFORMED, NULL, "header length ");
        cat_u64(err->reason, hlen);
        cat(err->reason, " does not fit the frame");
        return TF_E_MALFORMED;
    }
    const char *h = (const char *)buf + 4;
    tf_json root;
    if (!tf_utf8_valid(buf + 4, hlen) || !tf_json_parse(h, hlen, &root)) {
        tf_error_set(err, TF_E_MALFORMED, NULL, "header is not UTF-8 JSON");
        return TF_E_MALFORMED;
    }
    if (root.type != TF_JSON_OBJECT) {
        tf_error_set(err, TF_E_MALFORMED, NULL, "header is not a JSON object");
        return TF_E_MALFORMED;
    }
    f->header = root;
    tf_json id, v;
    int has_id = tf_json_get(&root, "id", &id) && id.type == TF_JSON_STRING;
    const tf_json *rid = has_id ? &id : NULL;
    /* v: Python compares with ==, so 1, 1.0 and true all equal the version 1 */
    int version_ok = 0;
    if (tf_json_get(&root, "v", &v)) {
        tf_json_num num;
        version_ok = v.type == TF_JSON_TRUE || (tf_json_number(&v, &num) && num.value == 1.0);
    }
    if (!version_ok) {
        tf_error_set(err, TF_E_BAD_VERSION, rid, "protocol version is not supported (this side speaks v1)");
        return TF_E_BAD_VERSION;
    }
    int type = -1;
    if (tf_json_get(&root, "type", &v))
        for (int k = 0; k < TF_MSG_COUNT; k++)
            if (tf_json_str_eq(&v, tf_msg_names[k])) type = k;
    if (type < 0) {
        tf_error_set(err, TF_E_UNKNOWN_TYPE, rid, "unknown message type");
        return TF_E_UNKNOWN_TYPE;
    }
    f->type = (tf_msg_type)type;
    size_t id_len = has_id ? tf_json_str_len(&id) : 0;
    if (!has_id || id_len < 1 || id_len > 128) {
        tf_error_set(err, TF_E_MALFORMED, NULL, "header has no correlation id ('id': 1-128 characters)");
        return TF_E_MALFORMED;
    }
    f->id = id;
    if (tf_json_get(&root, "run", &v) && v.type != TF_JSON_NULL) {
        if (v.type != TF_JSON_STRING) {
            tf_error_set(err, TF_E_MALFORMED, rid, "header field 'run' must be a string");
            return TF_E_MALFORMED;
        }
        f->has_run = 1;
        f->run = v;
    }
    if (tf_json_get(&root, "round", &v) && v.type != TF_JSON_NULL) {
        if (!is_int(&v, 0, NULL, NULL)) {
            tf_error_set(err, TF_E_MALFORMED, rid, "header field 'round' must be an integer >= 0");
            return TF_E_MALFORMED;
        }
        f->has_round = 1;
        f->round = v;
    }
    tf_json tlist;
    int has_tensors = tf_json_get(&root, "tensors", &tlist);
    if (has_tensors) {
        int good = tlist.type == TF_JSON_ARRAY;
        tf_json_iter it;
        tf_json item;
        if (good) {
            tf_json_iter_init(&it, &tlist);
            while (tf_json_iter_next(&it, NULL, &item))
                if (item.type != TF_JSON_OBJECT) good = 0;
        }
        if (!good) {
            tf_error_set(err, TF_E_MALFORMED, rid, "header field 'tensors' must be a list of objects");
            return TF_E_MALFORMED;
        }
    }
    tf_err_code rc;
    if (f->type == TF_MSG_RESULT) {
        rc = check_result_header(&root, rid, err);
    } else {
        f->has_config = tf_json_get(&root, "config", &f->config);
        if (f->has_config && f->config.type != TF_JSON_OBJECT) {
            tf_error_set(err, TF_E_MALFORMED, rid, "header field 'config' must be an object");
            return TF_E_MALFORMED;
        }
        rc = check_config(f->type, f->has_config ? &f->config : NULL, rid, err);
    }
    if (rc != TF_OK) return rc;
    f->data = buf + 4 + hlen;
    f->data_len = n - 4 - hlen;
    if (has_tensors) {
        tf_json_iter it;
        tf_json item;
        tf_tensor tmp;
        tf_json_iter_init(&it, &tlist);
        while (tf_json_iter_next(&it, NULL, &item)) {
            tf_tensor *t = f->n_stored < max_tensors ? &tensors[f->n_stored] : &tmp;
            rc = read_tensor(&item, f->data, f->data_len, &id, t, scratch, err);
            if (rc != TF_OK) return rc;
            if (t != &tmp) f->n_stored++;
            f->n_tensors++;
        }
    }
    return TF_OK;
}

int tf_frame_peek_id(const uint8_t *buf, size_t n, tf_json *id) {
    if (buf == NULL || n < 4) return 0;
    uint32_t hlen = rd_u32(buf);
    if (hlen > n - 4) return 0;
    tf_json root;
    if (!tf_utf8_valid(buf + 4, hlen) || !tf_json_parse((const char *)buf + 4, hlen, &root)) return 0;
    return root.type == TF_JSON_OBJECT && tf_json_get(&root, "id", id) && id->type == TF_JSON_STRING;
}

/* ------------------------------------------------------------------------------------ values */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal half: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3FF;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static double value_at(const uint8_t *p, tf_dtype dt) {
    uint8_t b[8];
    memcpy(b, p, tf_dtype_size[dt]);
    switch (dt) {
        case TF_FLOAT32: {
            uint32_t u = rd_u32(b);
            float f;
            memcpy(&f, &u, 4);
            return f;
        }
        case TF_FLOAT64: {
            uint64_t u = (uint64_t)rd_u32(b) | ((uint64_t)rd_u32(b + 4) << 32);
            double d;
            memcpy(&d, &u, 8);
            return d;
        }
        case TF_FLOAT16: return half_to_float((uint16_t)(b[0] | (b[1] << 8)));
        case TF_INT8: return (int8_t)b[0];
        case TF_UINT8: return b[0];
        case TF_INT16: return (int16_t)(uint16_t)(b[0] | (b[1] << 8));
        case TF_UINT16: return (uint16_t)(b[0] | (b[1] << 8));
        case TF_INT32: return (int32_t)rd_u32(b);
        case TF_UINT32: return rd_u32(b);
        case TF_INT64: return (double)(int64_t)((uint64_t)rd_u32(b) | ((uint64_t)rd_u32(b + 4) << 32));
        default: return 0;
    }
}

static const uint8_t *values_of(const tf_tensor *t) {
    return t->sparse ? t->data + t->nbytes - t->nnz * tf_dtype_size[t->dtype] : t->data;
}

int tf_tensor_all_finite(const tf_tensor *t) {
    if (t->dtype != TF_FLOAT32 && t->dtype != TF_FLOAT64 && t->dtype != TF_FLOAT16) return 1;
    uint64_t n = t->sparse ? t->nnz : t->size;
    const uint8_t *p = values_of(t);
    size_t item = tf_dtype_size[t->dtype];
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(value_at(p + i * item, t->dtype))) return 0;
    return 1;
}

void tf_tensor_to_f32(const tf_tensor *t, float *out) {
    const uint8_t *p = values_of(t);
    size_t item = tf_dtype_size[t->dtype];
    if (!t->sparse) {
        for (uint64_t i = 0; i < t->size; i++) out[i] = (float)value_at(p + i * item, t->dtype);
        return;
    }
    for (uint64_t i = 0; i < t->size; i++) out[i] = 0.0f;
    for (uint64_t i = 0; i < t->nnz; i++) out[index_at(t, i)] = (float)value_at(p + i * item, t->dtype);
}

/* ------------------------------------------------------------------------------------ writer */
void tf_w_init(tf_writer *w, uint8_t *buf, size_t cap) {
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = 0;
    w->depth = 0;
    w->need_comma[0] = 0;
    w->frame_start = 0;
}

void tf_w_raw(tf_writer *w, const void *p, size_t n) {
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void w_text(tf_writer *w, const char *s) { tf_w_raw(w, s, strlen(s)); }

static void w_quoted(tf_writer *w, const char *s) {
    static const char HEX[] = "0123456789abcdef";
    tf_w_raw(w, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            tf_w_raw(w, esc, 2);
        } else if (*p < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', HEX[*p >> 4], HEX[*p & 15]};
            tf_w_raw(w, esc, 6);
        } else {
            tf_w_raw(w, p, 1);
        }
    }
    tf_w_raw(w, "\"", 1);
}

void tf_w_key(tf_writer *w, const char *key) {
    if (w->depth > 0 && w->need_comma[w->depth]) tf_w_raw(w, ",", 1);
    if (w->depth > 0) w->need_comma[w->depth] = 1;
    if (key != NULL) {
        w_quoted(w, key);
        tf_w_raw(w, ":", 1);
    }
}

static void w_open(tf_writer *w, const char *key, const char *bracket) {
    tf_w_key(w, key);
    tf_w_raw(w, bracket, 1);
    if (w->depth + 1 < TF_WRITER_DEPTH) {
        w->depth++;
        w->need_comma[w->depth] = 0;
    } else {
        w->overflow = 1;
    }
}

void tf_w_obj_begin(tf_writer *w, const char *key) { w_open(w, key, "{"); }
void tf_w_arr_begin(tf_writer *w, const char *key) { w_open(w, key, "["); }
void tf_w_obj_end(tf_writer *w) {
    tf_w_raw(w, "}", 1);
    if (w->depth > 0) w->depth--;
}
void tf_w_arr_end(tf_writer *w) {
    tf_w_raw(w, "]", 1);
    if (w->depth > 0) w->depth--;
}

void tf_w_str(tf_writer *w, const char *key, const char *value) {
    tf_w_key(w, key);
    w_quoted(w, value);
}

void tf_w_int(tf_writer *w, const char *key, int64_t value) {
    char tmp[24];
    int i = 23, neg = value < 0;
    uint64_t u = neg ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    tmp[i] = '\0';
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg) tmp[--i] = '-';
    tf_w_key(w, key);
    w_text(w, tmp + i);
}

size_t tf_fmt_double(double v, char *out, size_t cap) {
    char tmp[32];
    size_t n = 0;
    if (!isfinite(v)) return 0;
    if (v < 0) {
        tmp[n++] = '-';
        v = -v;
    }
    if (v == 0.0) {
        tmp[n++] = '0';
    } else if (v < 1e15 && v == (double)(int64_t)v) { /* whole numbers print as integers */
        char d[20];
        int k = 0;
        uint64_t u = (uint64_t)v;
        while (u) {
            d[k++] = (char)('0' + u % 10);
            u /= 10;
        }
        while (k) tmp[n++] = d[--k];
    } else { /* d.dddddddddddddddde[+-]X: 17 significant digits, then trailing zeros dropped */
        int e10 = 0;
        while (v >= 10.0) {
            v /= 10.0;
            e10++;
        }
        while (v < 1.0) {
            v *= 10.0;
            e10--;
        }
        char d[17];
        for (int k = 0; k < 17; k++) {
            int digit = (int)v;
            if (digit > 9) digit = 9;
            d[k] = (char)('0' + digit);
            v = (v - digit) * 10.0;
        }
        if (v >= 5.0) { /* round the last digit */
            int k = 16;
            while (k >= 0 && d[k] == '9') d[k--] = '0';
            if (k >= 0) {
                d[k]++;
            } else {
                d[0] = '1';
                e10++;
            }
        }
        int last = 16;
        while (last > 0 && d[last] == '0') last--;
        tmp[n++] = d[0];
        if (last > 0) {
            tmp[n++] = '.';
            for (int k = 1; k <= last; k++) tmp[n++] = d[k];
        }
        if (e10 != 0) {
            tmp[n++] = 'e';
            if (e10 < 0) {
                tmp[n++] = '-';
                e10 = -e10;
            }
            if (e10 >= 100) tmp[n++] = (char)('0' + e10 / 100);
            if (e10 >= 10) tmp[n++] = (char)('0' + (e10 / 10) % 10);
            tmp[n++] = (char)('0' + e10 % 10);
        }
    }
    if (n <= cap) memcpy(out, tmp, n);
    return n;
}

void tf_w_num(tf_writer *w, const char *key, double value) {
    char tmp[32];
    size_t n = tf_fmt_double(value, tmp, sizeof tmp);
    tf_w_key(w, key);
    if (n == 0)
        w_text(w, "null");
    else
        tf_w_raw(w, tmp, n);
}

void tf_w_bool(tf_writer *w, const char *key, int value) {
    tf_w_key(w, key);
    w_text(w, value ? "true" : "false");
}

void tf_w_null(tf_writer *w, const char *key) {
    tf_w_key(w, key);
    w_text(w, "null");
}

void tf_w_json(tf_writer *w, const char *key, const char *text, size_t n) {
    tf_w_key(w, key);
    tf_w_raw(w, text, n);
}

void tf_frame_begin(tf_writer *w) {
    w->frame_start = w->len;
    tf_w_raw(w, "\0\0\0\0", 4);
    tf_w_obj_begin(w, NULL);
}

static size_t body_bytes(const tf_out_tensor *t, size_t *idx_bytes) {
    uint64_t size = 1;
    for (int d = 0; d < t->ndim; d++) size *= t->shape[d];
    if (!t->sparse) {
        *idx_bytes = 0;
        return (size_t)(size * 4);
    }
    size_t ib = (size_t)t->nnz * (size <= TF_UINT16_MAX_ENTRIES ? 2u : 4u);
    *idx_bytes = ib;
    return ib + (4 - ib % 4) % 4 + (size_t)t->nnz * 4;
}

static void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void w_f32(tf_writer *w, float f) {
    uint32_t u;
    uint8_t b[4];
    memcpy(&u, &f, 4);
    put_le32(b, u);
    tf_w_raw(w, b, 4);
}

size_t tf_frame_finish(tf_writer *w, const tf_out_tensor *tensors, size_t n) {
    size_t offset = 0, ib;
    tf_w_arr_begin(w, "tensors");
    for (size_t i = 0; i < n; i++) {
        const tf_out_tensor *t = &tensors[i];
        size_t nbytes = body_bytes(t, &ib);
        uint64_t size = 1;
        for (int d = 0; d < t->ndim; d++) size *= t->shape[d];
        tf_w_obj_begin(w, NULL);
        tf_w_str(w, "name", t->name);
        tf_w_str(w, "dtype", "float32");
        tf_w_arr_begin(w, "shape");
        for (int d = 0; d < t->ndim; d++) tf_w_int(w, NULL, t->shape[d]);
        tf_w_arr_end(w);
        if (t->sparse) {
            tf_w_str(w, "encoding", "sparse");
            tf_w_int(w, "nnz", t->nnz);
            if (size <= TF_UINT16_MAX_ENTRIES) tf_w_str(w, "index_dtype", "uint16");
        }
        tf_w_int(w, "offset", (int64_t)offset);
        tf_w_int(w, "nbytes", (int64_t)nbytes);
        tf_w_obj_end(w);
        offset += nbytes + (8 - nbytes % 8) % 8;
    }
    tf_w_arr_end(w);
    tf_w_obj_end(w);
    if (w->overflow) return 0;
    put_le32(w->buf + w->frame_start, (uint32_t)(w->len - w->frame_start - 4));
    static const uint8_t ZERO[8] = {0};
    for (size_t i = 0; i < n; i++) {
        const tf_out_tensor *t = &tensors[i];
        size_t nbytes = body_bytes(t, &ib);
        if (!t->sparse) {
            uint64_t size = nbytes / 4;
            for (uint64_t k = 0; k < size; k++) w_f32(w, t->values[k]);
        } else {
            int u16 = ib == (size_t)t->nnz * 2;
            for (uint32_t k = 0; k < t->nnz; k++) {
                uint8_t b[4];
                put_le32(b, t->indices[k]);
                tf_w_raw(w, b, u16 ? 2 : 4);
            }
            tf_w_raw(w, ZERO, (4 - ib % 4) % 4);
            for (uint32_t k = 0; k < t->nnz; k++) w_f32(w, t->values[k]);
        }
        tf_w_raw(w, ZERO, (8 - nbytes % 8) % 8);
    }
    return w->overflow ? 0 : w->len - w->frame_start;
}
