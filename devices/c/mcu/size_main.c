/* The learner + codec as a Cortex-M4 firmware would link them, for `size` (no stdio, no heap).
 *
 * Everything the device keeps is static: the head (weights, activations, error vectors: tf_head)
 * and one raw input sample (TF_SAMPLE_BYTES). A task frame arrives in the transport's buffer and
 * is decoded in place; a reply is written into that buffer's owner, so neither is counted here.
 * The initial head lives in flash (tf_head_init_weights). Inputs come from volatile memory so that
 * the compiler keeps every path.
 */
#include <string.h>

#include "tf_codec.h"
#include "tf_head_weights.h"
#include "tf_learner.h"

static tf_head head;
static volatile uint8_t sample[TF_SAMPLE_BYTES];
static volatile uint32_t frame_len;
static volatile const uint8_t *frame_ptr;
static volatile float sink;

int main(void) {
    const uint16_t sizes[] = TF_HEAD_SIZES;
    tf_head_init(&head, sizes, TF_HEAD_N_SIZES, TF_HEAD_KIND, TF_HEAD_ACTIVATION);
    memcpy(head.params, tf_head_init_weights, sizeof(float) * head.n_params);
    float x[TF_HEAD_N_IN], y[TF_HEAD_N_OUT];
    for (int i = 0; i < TF_HEAD_N_IN; i++) x[i] = (float)sample[i % TF_SAMPLE_BYTES];
    for (int i = 0; i < TF_HEAD_N_OUT; i++) y[i] = (float)sample[0];
    sink = (float)tf_head_sgd_step(&head, x, y, sample[0] % TF_HEAD_N_OUT, 0.01f, 0xFFFFFFFFu, 10.0f);
    tf_frame f;
    tf_error err;
    tf_tensor t[2 * TF_MAX_LAYERS];
    tf_scratch scratch = {0, 0};
    if (tf_frame_decode((const uint8_t *)frame_ptr, frame_len, frame_len, &f, t, 2 * TF_MAX_LAYERS, scratch, &err) ==
            TF_OK &&
        f.n_stored == 2u * head.n_layers) {
        uint32_t off = 0;
        for (int i = 0; i < 2 * head.n_layers; i++) {
            if (t[i].size > head.n_params - off || !tf_tensor_all_finite(&t[i])) break;
            tf_tensor_to_f32(&t[i], head.params + off);
            off += (uint32_t)t[i].size;
        }
    }
    uint8_t out[256];
    tf_writer w;
    tf_w_init(&w, out, sizeof out);
    tf_frame_begin(&w);
    tf_w_num(&w, "loss", sink);
    tf_out_tensor o = {"b0", 1, {TF_HEAD_N_OUT}, head.params, 0, 0, 0};
    sink = (float)tf_frame_finish(&w, &o, 1);
    return 0;
}
