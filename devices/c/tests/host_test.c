/* host_test: check the C learner and codec against golden vectors exported by Python.
 *
 * Usage: host_test GOLDEN_DIR        (exit 0 = every check passed; one JSON summary line on stdout)
 *
 * GOLDEN_DIR/learner.tfb   frame file: initial head w0, b0, ...; samples x, y; step order `order`;
 *                          numpy's weights after the steps expect_w0, ...; its losses expect_losses;
 *                          config {lr, clip, kind, activation, tol, ridge_lambda, proximal_mu, lr_mu,
 *                          trainable} and, with ridge_lambda, numpy's ridge readout of the initial head
 *                          ridge_w, ridge_b. With proximal_mu > 0 the steps are FedProx steps anchored
 *                          at the initial head; trainable is the bit mask of the layers updated.
 * GOLDEN_DIR/codec.bin     records u32 length | frame | u8 error code devices/wire/frames.py gives it.
 * Also an encode/decode round trip of dense and sparse (uint16) result tensors.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tf_codec.h"
#include "tf_learner.h"

static tf_head HEAD;
#if TF_RIDGE_MAX_DIM > 0
static tf_ridge RIDGE;
#endif

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len + 1);
    if (buf == NULL || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

#define MAX_T 64
static tf_tensor T[MAX_T];
static tf_frame F;
static uint8_t BITS[1 << 17];

static const tf_tensor *find(const char *name) {
    for (size_t i = 0; i < F.n_stored; i++)
        if (tf_json_str_eq(&T[i].name, name)) return &T[i];
    return NULL;
}

static float *as_f32(const tf_tensor *t) {
    float *out = malloc(sizeof(float) * (t->size ? t->size : 1));
    tf_tensor_to_f32(t, out);
    return out;
}

static double cfg(const char *key, double fallback) {
    tf_json v;
    tf_json_num num;
    if (F.has_config && tf_json_get(&F.config, key, &v) && tf_json_number(&v, &num)) return num.value;
    return fallback;
}

static int cfg_is(const char *key, const char *value) {
    tf_json v;
    return F.has_config && tf_json_get(&F.config, key, &v) && tf_json_str_eq(&v, value);
}

static double RIDGE_TOL = 1e-3;

static int check_learner(const char *dir, double *max_abs, double *loss_rel, double *ridge_abs, long *steps_out) {
    (void)ridge_abs; /* set only when tf_config.h sizes the ridge readout */
    char path[1024];
    size_t n;
    tf_error err;
    snprintf(path, sizeof path, "%s/learner.tfb", dir);
    uint8_t *buf = read_all(path, &n);
    if (buf == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        return 0;
    }
    tf_scratch scratch = {BITS, sizeof BITS * 8};
    if (tf_frame_decode(buf, n, n, &F, T, MAX_T, scratch, &err) != TF_OK) {
        fprintf(stderr, "%s: %s\n", path, err.reason);
        return 0;
    }
    uint16_t sizes[TF_MAX_LAYERS + 1];
    int L = 0;
    char name[32];
    for (;; L++) {
        snprintf(name, sizeof name, "w%d", L);
        const tf_tensor *w = find(name);
        if (w == NULL) break;
        if (L >= TF_MAX_LAYERS) return 0;
        sizes[L] = (uint16_t)w->shape[0];
        sizes[L + 1] = (uint16_t)w->shape[1];
    }
    const int kind = cfg_is("kind", "classification") ? TF_CLASSIFICATION : TF_REGRESSION;
    const int act = cfg_is("activation", "tanh") ? TF_ACT_TANH : TF_ACT_RELU;
    if (L == 0 || tf_head_init(&HEAD, sizes, L + 1, kind, act) != TF_HEAD_OK) {
        fprintf(stderr, "head does not fit this build's tf_config.h\n");
        return 0;
    }
    for (int i = 0; i < 2 * L; i++) { /* initial weights */
        snprintf(name, sizeof name, "%c%d", i % 2 ? 'b' : 'w', i / 2);
        const tf_tensor *t = find(name);
        tf_tensor_to_f32(t, HEAD.params + (i % 2 ? HEAD.b_off[i / 2] : HEAD.w_off[i / 2]));
    }
    const tf_tensor *tx = find("x"), *ty = find("y"), *to = find("order"), *tl = find("expect_losses");
    if (!tx || !ty || !to || !tl) return 0;
    float *x = as_f32(tx), *y = as_f32(ty), *order = as_f32(to), *losses = as_f32(tl);
    const uint32_t n_in = sizes[0], n_out = sizes[L];
    const float lr = (float)cfg("lr", 0.01), clip = (float)cfg("clip", 0.0);
    const double tol = cfg("tol", 1e-5);
    RIDGE_TOL = cfg("ridge_tol", 1e-3);
#if TF_RIDGE_MAX_DIM > 0
    const double lambda = cfg("ridge_lambda", -1.0);
    if (lambda >= 0.0 && find("ridge_w") != NULL) { /* ridge readout of the initial head on all samples */
        static float saved[TF_MAX_PARAMS];
        memcpy(saved, HEAD.params, sizeof(float) * HEAD.n_params);
        tf_ridge_begin(&RIDGE, &HEAD);
        for (uint64_t i = 0; i < tx->shape[0]; i++)
            tf_ridge_add(&RIDGE, &HEAD, x + i * n_in, y + (kind == TF_REGRESSION ? i * n_out : 0),
                         kind == TF_CLASSIFICATION ? (int32_t)y[i] : 0);
        if (tf_ridge_solve(&RIDGE, &HEAD, (float)lambda) != 0) return 0;
        float *rw = as_f32(find("ridge_w")), *rb = as_f32(find("ridge_b"));
        double worst = 0.0;
        for (uint32_t k = 0; k < (uint32_t)sizes[L - 1] * n_out; k++)
            worst = fmax(worst, fabs((double)HEAD.params[HEAD.w_off[L - 1] + k] - rw[k]));
        for (uint32_t k = 0; k < n_out; k++) worst = fmax(worst, fabs((double)HEAD.params[HEAD.b_off[L - 1] + k] - rb[k]));
        *ridge_abs = worst;
        memcpy(HEAD.params, saved, sizeof(float) * HEAD.n_params);
        free(rw);
        free(rb);
    }
#endif
    static float anchor[TF_MAX_PARAMS]; /* FedProx: the head the steps start from */
    memcpy(anchor, HEAD.params, sizeof(float) * HEAD.n_params);
    const double mu = cfg("proximal_mu", 0.0);
    const float lr_mu = (float)cfg("lr_mu", 0.0);
    const uint32_t trainable = (uint32_t)cfg("trainable", (double)0xFFFFFFFFu);
    const long steps = (long)to->size;
    const int trace = getenv("TF_HOST_TEST_TRACE") != NULL;
    double worst_loss = 0.0;
    for (long s = 0; s < steps; s++) {
        uint32_t i = (uint32_t)order[s];
        double loss = tf_head_sgd_step_prox(&HEAD, x + (size_t)i * n_in,
                                            kind == TF_REGRESSION ? y + (size_t)i * n_out : NULL,
                                            kind == TF_CLASSIFICATION ? (int32_t)y[i] : 0, lr, trainable, clip,
                                            mu > 0.0 ? anchor : NULL, lr_mu);
        double rel = fabs(loss - losses[s]) / fmax(1e-3, fabs((double)losses[s]));
        if (trace) fprintf(stderr, "step %ld sample %u loss %.9g numpy %.9g\n", s, i, loss, (double)losses[s]);
        worst_loss = fmax(worst_loss, rel);
    }
    double worst = 0.0;
    for (int i = 0; i < 2 * L; i++) {
        snprintf(name, sizeof name, "expect_%c%d", i % 2 ? 'b' : 'w', i / 2);
        const tf_tensor *t = find(name);
        if (t == NULL) return 0;
        float *e = as_f32(t);
        const float *got = HEAD.params + (i % 2 ? HEAD.b_off[i / 2] : HEAD.w_off[i / 2]);
        for (uint64_t k = 0; k < t->size; k++) worst = fmax(worst, fabs((double)got[k] - e[k]));
        free(e);
    }
    *max_abs = worst;
    *loss_rel = worst_loss;
    *steps_out = steps;
    free(x);
    free(y);
    free(order);
    free(losses);
    free(buf);
    return worst <= tol;
}

static int check_codec(const char *dir, long *cases, long *mismatches) {
    char path[1024];
    size_t n;
    snprintf(path, sizeof path, "%s/codec.bin", dir);
    uint8_t *buf = read_all(path, &n);
    if (buf == NULL) return 0;
    size_t p = 0;
    tf_scratch scratch = {BITS, sizeof BITS * 8};
    while (p + 4 <= n) {
        uint32_t len = (uint32_t)buf[p] | ((uint32_t)buf[p + 1] << 8) | ((uint32_t)buf[p + 2] << 16) |
                       ((uint32_t)buf[p + 3] << 24);
        if (p + 4 + len + 1 > n) break;
        const uint8_t *frame = buf + p + 4;
        uint8_t want = buf[p + 4 + len];
        /* copy so that ASan sees reads past the frame's end */
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, frame, len);
        tf_frame f;
        tf_error err;
        static tf_tensor ts[MAX_T];
        tf_err_code got = tf_frame_decode(copy, len, TF_DEFAULT_MAX_FRAME_BYTES, &f, ts, MAX_T, scratch, &err);
        if (got == TF_OK)
            for (size_t i = 0; i < f.n_stored; i++)
                if (!tf_tensor_all_finite(&ts[i]) && got == TF_OK) got = TF_E_NOT_FINITE;
        if ((uint8_t)got != want) {
            (*mismatches)++;
            fprintf(stderr, "codec case %ld: C says %s, Python says %s (%s)\n", *cases, tf_err_names[got][0] ? tf_err_names[got] : "ok",
                    want < TF_E_COUNT && tf_err_names[want][0] ? tf_err_names[want] : "ok", got ? err.reason : "");
        }
        free(copy);
        (*cases)++;
        p += 4 + len + 1;
    }
    free(buf);
    return *mismatches == 0 && *cases > 0;
}

static int check_roundtrip(void) {
    static uint8_t out[1 << 16];
    float w[6] = {1.5f, -2.0f, 0.0f, 3.25f, -0.5f, 7.0f}, vals[2] = {-2.0f, 7.0f};
    uint32_t idx[2] = {1, 5};
    tf_out_tensor ts[2] = {{"w0", 2, {2, 3}, w, NULL, 0, 0}, {"w1", 1, {6}, vals, idx, 2, 1}};
    tf_writer wr;
    tf_w_init(&wr, out, sizeof out);
    tf_frame_begin(&wr);
    tf_w_int(&wr, "v", 1);
    tf_w_str(&wr, "type", "result");
    tf_w_str(&wr, "id", "roundtrip");
    tf_w_str(&wr, "device", "host-test");
    tf_w_bool(&wr, "ok", 1);
    tf_w_obj_begin(&wr, "metrics");
    tf_w_num(&wr, "loss", 0.125);
    tf_w_num(&wr, "tiny", 1.25e-7);
    tf_w_obj_end(&wr);
    size_t n = tf_frame_finish(&wr, ts, 2);
    tf_frame f;
    tf_error err;
    tf_tensor got[2];
    tf_scratch scratch = {BITS, sizeof BITS * 8};
    if (n == 0 || tf_frame_decode(out, n, n, &f, got, 2, scratch, &err) != TF_OK) return 0;
    float a[6], b[6];
    tf_tensor_to_f32(&got[0], a);
    tf_tensor_to_f32(&got[1], b);
    float want_b[6] = {0, -2.0f, 0, 0, 0, 7.0f};
    return memcmp(a, w, sizeof a) == 0 && memcmp(b, want_b, sizeof b) == 0 && got[1].index_u16 && got[1].nnz == 2;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: host_test GOLDEN_DIR\n");
        return 2;
    }
    double max_abs = -1, loss_rel = -1, ridge_abs = -1;
    long steps = 0, cases = 0, mismatches = 0;
    int ok_l = check_learner(argv[1], &max_abs, &loss_rel, &ridge_abs, &steps);
    int ok_c = check_codec(argv[1], &cases, &mismatches);
    int ok_r = check_roundtrip();
    int ok_ridge = ridge_abs < 0 || ridge_abs <= RIDGE_TOL;
    printf("{\"learner_ok\": %s, \"steps\": %ld, \"max_abs_weight_diff\": %.9g, \"max_rel_loss_diff\": %.9g, "
           "\"ridge_max_abs\": %.9g, \"codec_ok\": %s, \"codec_cases\": %ld, \"codec_mismatches\": %ld, "
           "\"roundtrip_ok\": %s}\n",
           ok_l ? "true" : "false", steps, max_abs, loss_rel, ridge_abs, ok_c ? "true" : "false", cases, mismatches,
           ok_r ? "true" : "false");
    return ok_l && ok_c && ok_r && ok_ridge ? 0 : 1;
}
