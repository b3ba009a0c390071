/* tf_learner: the trainable float head of a tinyfleet device in portable C99 (float32, no heap).
 *
 * The same network and the same update as devices/learning/head.py (MLPHead._step):
 *   a_0 = x;  z_l = a_l W_l + b_l;  a_{l+1} = act(z_l) for hidden layers (ReLU or tanh), the output
 *   layer is linear. Loss: MSE over the outputs (regression) or softmax cross-entropy with an
 *   integer label (classification). Batch-1 SGD, top-down: d_{l-1} = (W_l d_l) * act'(a_l) with
 *   the old W_l, then W_l -= a_l (x) s d_l, b_l -= s d_l with s = lr, or lr * clip / ||g_l|| when the
 *   per-layer gradient norm ||g_l|| = ||d_l|| sqrt(||a_l||^2 + 1) exceeds clip.
 * FedProx (tf_head_sgd_step_prox): the loss of every step gains mu/2 ||w - anchor||^2, so each trained
 *   array first moves W_l -= (lr mu) (W_l - anchor_l), then takes the (clipped) data step, as in
 *   MLPHead._step with proximal_mu; the anchor is the weights the round started from.
 * No weight-sized gradient exists: only one error vector per neuron, which is what
 * firmware_models/memory_budget.py counts. Every buffer is inside tf_head, sized by tf_config.h
 * (generated from the model), so sizeof(tf_head) is the learner's RAM.
 *
 * Also: the closed-form ridge readout of the last layer, W = (H'H + lambda I)^-1 H'Y on the last
 * hidden layer's activations with the bias as an extra column (TinyMetaFed's reconstruction).
 */
#ifndef TF_LEARNER_H
#define TF_LEARNER_H

#include <stddef.h>
#include <stdint.h>

#include "tf_config.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TF_MAX_LAYERS
#error "tf_config.h must define TF_MAX_LAYERS, TF_MAX_PARAMS, TF_MAX_UNITS and TF_MAX_ERRORS"
#endif
#ifndef TF_RIDGE_MAX_DIM
#define TF_RIDGE_MAX_DIM 0
#endif
#ifndef TF_RIDGE_MAX_OUT
#define TF_RIDGE_MAX_OUT 0
#endif

enum { TF_REGRESSION = 0, TF_CLASSIFICATION = 1 };
enum { TF_ACT_RELU = 0, TF_ACT_TANH = 1 };
enum { TF_HEAD_OK = 0, TF_HEAD_BAD_LAYOUT = -1, TF_HEAD_TOO_BIG = -2 };

typedef struct {
    uint16_t n_layers;
    uint16_t sizes[TF_MAX_LAYERS + 1]; /* [in, h0, ..., out] */
    uint8_t kind;                      /* TF_REGRESSION / TF_CLASSIFICATION */
    uint8_t act;                       /* hidden activation */
    uint32_t w_off[TF_MAX_LAYERS];     /* offsets into params: w0 (in x h0, row-major), b0, w1, b1, ... */
    uint32_t b_off[TF_MAX_LAYERS];
    uint32_t a_off[TF_MAX_LAYERS + 1]; /* offsets into acts: a_0 .. a_L */
    uint32_t e_off[TF_MAX_LAYERS];     /* offsets into errs: d_0 .. d_{L-1} */
    uint32_t n_params;
    float params[TF_MAX_PARAMS];       /* the head.npz layout, contiguous: w0, b0, w1, b1, ... */
    float acts[TF_MAX_UNITS];
    float errs[TF_MAX_ERRORS];
} tf_head;

/* Lay out a head of n_sizes layer widths (>= 2). Weights are zero until set. */
int tf_head_init(tf_head *h, const uint16_t *sizes, int n_sizes, int kind, int act);
uint32_t tf_head_layer_params(const tf_head *h, int layer); /* weights + biases of one layer */

/* Forward pass of one sample (n_in floats); returns the outputs (values or logits). */
const float *tf_head_forward(tf_head *h, const float *x);

/* Loss of one sample without an update (y: n_out targets for regression; label for classification). */
double tf_head_loss(tf_head *h, const float *x, const float *y, int32_t label);

/* One SGD step; returns the loss before the update (prequential). trainable: bit l = update
 * layer l (others keep their exact values; errors still flow through them). clip <= 0: no clip. */
double tf_head_sgd_step(tf_head *h, const float *x, const float *y, int32_t label, float lr, uint32_t trainable,
                        float clip);

/* The same step with FedProx's proximal term (above). anchor: n_params floats in the params layout
 * (NULL: no term); lr_mu = lr * mu, rounded to float32 once by the caller as numpy rounds it. */
double tf_head_sgd_step_prox(tf_head *h, const float *x, const float *y, int32_t label, float lr, uint32_t trainable,
                             float clip, const float *anchor, float lr_mu);

int tf_head_all_finite(const tf_head *h);

#if TF_RIDGE_MAX_DIM > 0
#ifdef TF_RIDGE_FLOAT
typedef float tf_ridge_real;  /* float32 statistics: half the RAM, ~1e-3 agreement with float64 */
#else
typedef double tf_ridge_real; /* default: double, so the readout agrees with numpy's float64 solve */
#endif
/* Streaming sufficient statistics of the ridge readout: A = H'H, B = H'Y ([h, 1] rows). */
typedef struct {
    uint16_t dim;   /* last hidden width + 1 */
    uint16_t n_out;
    uint32_t count;
    tf_ridge_real A[TF_RIDGE_MAX_DIM * TF_RIDGE_MAX_DIM];
    tf_ridge_real B[TF_RIDGE_MAX_DIM * TF_RIDGE_MAX_OUT];
} tf_ridge;

int tf_ridge_begin(tf_ridge *r, const tf_head *h);
/* Add one sample: forward to the last hidden layer, accumulate; one-hot Y for classification. */
void tf_ridge_add(tf_ridge *r, tf_head *h, const float *x, const float *y, int32_t label);
/* Solve (A + lambda I) W = B by Cholesky and write the last layer's weights and bias.
 * Returns 0, or -1 if the system is not positive definite (the head is left unchanged). */
int tf_ridge_solve(tf_ridge *r, tf_head *h, float lambda);
#endif

#ifdef __cplusplus
}
#endif
#endif
