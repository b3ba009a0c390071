/* tf_learner: see tf_learner.h. Summation order follows the naive definition (input index
 * ascending, bias added after the sum), float32 throughout, double only where head.py uses a
 * Python float (the loss, the clip norm and its scale), so it tracks numpy within float32
 * rounding. */
#include "tf_learner.h"

#include <math.h>
#include <string.h>

int tf_head_init(tf_head *h, const uint16_t *sizes, int n_sizes, int kind, int act) {
    if (n_sizes < 2 || (kind != TF_REGRESSION && kind != TF_CLASSIFICATION) ||
        (act != TF_ACT_RELU && act != TF_ACT_TANH))
        return TF_HEAD_BAD_LAYOUT;
    if (n_sizes - 1 > TF_MAX_LAYERS) return TF_HEAD_TOO_BIG;
    uint32_t params = 0, units = 0, errors = 0;
    for (int i = 0; i < n_sizes; i++) {
        if (sizes[i] == 0) return TF_HEAD_BAD_LAYOUT;
        h->sizes[i] = sizes[i];
    }
    h->n_layers = (uint16_t)(n_sizes - 1);
    h->kind = (uint8_t)kind;
    h->act = (uint8_t)act;
    for (int l = 0; l < h->n_layers; l++) {
        uint32_t fan_in = sizes[l], fan_out = sizes[l + 1];
        h->w_off[l] = params;
        params += fan_in * fan_out;
        h->b_off[l] = params;
        params += fan_out;
        h->e_off[l] = errors;
        errors += fan_out;
    }
    for (int l = 0; l <= h->n_layers; l++) {
        h->a_off[l] = units;
        units += sizes[l];
    }
    if (params > TF_MAX_PARAMS || units > TF_MAX_UNITS || errors > TF_MAX_ERRORS) return TF_HEAD_TOO_BIG;
    h->n_params = params;
    memset(h->params, 0, sizeof(float) * params);
    return TF_HEAD_OK;
}

uint32_t tf_head_layer_params(const tf_head *h, int layer) {
    return (uint32_t)h->sizes[layer] * h->sizes[layer + 1] + h->sizes[layer + 1];
}

const float *tf_head_forward(tf_head *h, const float *x) {
    const int last = h->n_layers - 1;
    memcpy(h->acts, x, sizeof(float) * h->sizes[0]);
    for (int l = 0; l <= last; l++) {
        const uint32_t n_in = h->sizes[l], n_out = h->sizes[l + 1];
        const float *a = h->acts + h->a_off[l];
        const float *w = h->params + h->w_off[l];
        const float *b = h->params + h->b_off[l];
        float *z = h->acts + h->a_off[l + 1];
        for (uint32_t j = 0; j < n_out; j++) z[j] = 0.0f;
        for (uint32_t i = 0; i < n_in; i++) {
            const float ai = a[i];
            const float *row = w + i * n_out;
            for (uint32_t j = 0; j < n_out; j++) z[j] += ai * row[j];
        }
        for (uint32_t j = 0; j < n_out; j++) {
            float v = z[j] + b[j];
            if (l < last) v = h->act == TF_ACT_RELU ? (v > 0.0f ? v : 0.0f) : tanhf(v);
            z[j] = v;
        }
    }
    return h->acts + h->a_off[h->n_layers];
}

static float dotf(const float *a, const float *b, uint32_t n) {
    float s = 0.0f;
    for (uint32_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Loss of the current output and, if d != NULL, dL/d(output) into d. */
static double output_loss(const tf_head *h, const float *y, int32_t label, float *d) {
    const uint32_t n = h->sizes[h->n_layers];
    const float *out = h->acts + h->a_off[h->n_layers];
    if (h->kind == TF_REGRESSION) {
        float s = 0.0f;
        for (uint32_t j = 0; j < n; j++) {
            float diff = out[j] - y[j];
            s += diff * diff;
            if (d) d[j] = diff;
        }
        if (d) {
            const float k = (float)(2.0 / n);
            for (uint32_t j = 0; j < n; j++) d[j] *= k;
        }
        return (double)s / n;
    }
    float mx = out[0];
    for (uint32_t j = 1; j < n; j++)
        if (out[j] > mx) mx = out[j];
    float z = 0.0f;
    for (uint32_t j = 0; j < n; j++) {
        float e = expf(out[j] - mx);
        if (d) d[j] = e;
        z += e;
    }
    if (d) {
        for (uint32_t j = 0; j < n; j++) d[j] = d[j] / z;
        d[label] -= 1.0f;
    }
    return log((double)z) - (double)(out[label] - mx);
}

double tf_head_loss(tf_head *h, const float *x, const float *y, int32_t label) {
    tf_head_forward(h, x);
    return output_loss(h, y, label, NULL);
}

double tf_head_sgd_step(tf_head *h, const float *x, const float *y, int32_t label, float lr, uint32_t trainable,
                        float clip) {
    return tf_head_sgd_step_prox(h, x, y, label, lr, trainable, clip, NULL, 0.0f);
}

double tf_head_sgd_step_prox(tf_head *h, const float *x, const float *y, int32_t label, float lr, uint32_t trainable,
                             float clip, const float *anchor, float lr_mu) {
    const int last = h->n_layers - 1;
    tf_head_forward(h, x);
    float *d = h->errs + h->e_off[last];
    const double loss = output_loss(h, y, label, d);
    int lowest = 0;
    while (lowest <= last && !(trainable & (1u << lowest))) lowest++;
    if (lowest > last) return loss; /* nothing to train */
    for (int l = last; l >= lowest; l--) {
        const uint32_t n_in = h->sizes[l], n_out = h->sizes[l + 1];
        const float *a = h->acts + h->a_off[l];
        float *w = h->params + h->w_off[l];
        float *b = h->params + h->b_off[l];
        d = h->errs + h->e_off[l];
        if (l > lowest) { /* d_{l-1} = (W_l d_l) * act'(a_l), with the old W_l */
            float *below = h->errs + h->e_off[l - 1];
            for (uint32_t i = 0; i < n_in; i++) {
                float s = dotf(w + i * n_out, d, n_out);
                below[i] = h->act == TF_ACT_RELU ? s * (a[i] > 0.0f ? 1.0f : 0.0f) : s * (1.0f - a[i] * a[i]);
            }
        }
        if (trainable & (1u << l)) {
            double scale = lr;
            if (clip > 0.0f) {
                double norm = sqrt((double)dotf(d, d, n_out) * ((double)dotf(a, a, n_in) + 1.0));
                if (norm > clip) scale = (double)lr * clip / norm;
            }
            const float s = (float)scale;
            for (uint32_t j = 0; j < n_out; j++) d[j] *= s; /* sd = d * s, in place: d_l is not needed again */
            if (anchor != NULL) { /* the proximal pull, from the old weights, before the data step */
                const float *aw = anchor + h->w_off[l], *ab = anchor + h->b_off[l];
                for (uint32_t k = 0; k < n_in * n_out; k++) w[k] -= lr_mu * (w[k] - aw[k]);
                for (uint32_t j = 0; j < n_out; j++) b[j] -= lr_mu * (b[j] - ab[j]);
            }
            for (uint32_t i = 0; i < n_in; i++) {
                const float ai = a[i];
                float *row = w + i * n_out;
                for (uint32_t j = 0; j < n_out; j++) row[j] -= ai * d[j];
            }
            for (uint32_t j = 0; j < n_out; j++) b[j] -= d[j];
        }
    }
    return loss;
}

int tf_head_all_finite(const tf_head *h) {
    for (uint32_t i = 0; i < h->n_params; i++)
        if (!isfinite(h->params[i])) return 0;
    return 1;
}

#if TF_RIDGE_MAX_DIM > 0
int tf_ridge_begin(tf_ridge *r, const tf_head *h) {
    const uint32_t dim = h->sizes[h->n_layers - 1] + 1u, n_out = h->sizes[h->n_layers];
    if (dim > TF_RIDGE_MAX_DIM || n_out > TF_RIDGE_MAX_OUT) return -1;
    r->dim = (uint16_t)dim;
    r->n_out = (uint16_t)n_out;
    r->count = 0;
    memset(r->A, 0, sizeof(tf_ridge_real) * dim * dim);
    memset(r->B, 0, sizeof(tf_ridge_real) * dim * n_out);
    return 0;
}

void tf_ridge_add(tf_ridge *r, tf_head *h, const float *x, const float *y, int32_t label) {
    tf_head_forward(h, x);
    const float *hid = h->acts + h->a_off[h->n_layers - 1];
    const uint32_t dim = r->dim, k = r->n_out;
    for (uint32_t i = 0; i < dim; i++) {
        const tf_ridge_real hi = i + 1 < dim ? hid[i] : 1.0f;
        if (hi == 0) continue;
        for (uint32_t j = 0; j <= i; j++) r->A[i * dim + j] += hi * (tf_ridge_real)(j + 1 < dim ? hid[j] : 1.0f);
        for (uint32_t c = 0; c < k; c++) {
            const tf_ridge_real t = h->kind == TF_REGRESSION ? y[c] : (c == (uint32_t)label ? 1.0f : 0.0f);
            r->B[i * k + c] += hi * t;
        }
    }
    r->count++;
}

int tf_ridge_solve(tf_ridge *r, tf_head *h, float lambda) {
    const uint32_t n = r->dim, k = r->n_out;
    tf_ridge_real *A = r->A, *B = r->B;
    for (uint32_t i = 0; i < n; i++) A[i * n + i] += lambda;
    for (uint32_t j = 0; j < n; j++) { /* Cholesky A = L L' in the lower triangle */
        tf_ridge_real s = A[j * n + j];
        for (uint32_t p = 0; p < j; p++) s -= A[j * n + p] * A[j * n + p];
        if (!(s > 0)) return -1;
        const tf_ridge_real ljj = sqrt(s);
        A[j * n + j] = ljj;
        for (uint32_t i = j + 1; i < n; i++) {
            tf_ridge_real t = A[i * n + j];
            for (uint32_t p = 0; p < j; p++) t -= A[i * n + p] * A[j * n + p];
            A[i * n + j] = t / ljj;
        }
    }
    for (uint32_t c = 0; c < k; c++) { /* L y = b, then L' w = y, column by column, in place in B */
        for (uint32_t i = 0; i < n; i++) {
            tf_ridge_real t = B[i * k + c];
            for (uint32_t p = 0; p < i; p++) t -= A[i * n + p] * B[p * k + c];
            B[i * k + c] = t / A[i * n + i];
        }
        for (uint32_t ii = n; ii-- > 0;) {
            tf_ridge_real t = B[ii * k + c];
            for (uint32_t p = ii + 1; p < n; p++) t -= A[p * n + ii] * B[p * k + c];
            B[ii * k + c] = t / A[ii * n + ii];
        }
    }
    for (uint32_t i = 0; i < n * k; i++)
        if (!isfinite(B[i])) return -1;
    const int l = h->n_layers - 1;
    for (uint32_t i = 0; i < (n - 1) * k; i++) h->params[h->w_off[l] + i] = (float)B[i]; /* W: rows 0..n-2 */
    for (uint32_t c = 0; c < k; c++) h->params[h->b_off[l] + c] = (float)B[(n - 1) * k + c];  /* bias: row n-1 */
    return 0;
}
#endif
