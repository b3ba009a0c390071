/* libFuzzer target: the codec and the whole agent on arbitrary bytes, under ASan + UBSan.
 *
 * Each input is one task payload. It is decoded (every tensor expanded and checked for NaN when
 * the frame is accepted), then handed to a real agent (tf_agent_handle: decode, duplicate cache,
 * train/evaluate/adapt on 16 local samples, reply encoding), and the reply must itself decode as
 * a valid result frame: an agent that answers with a malformed frame is a bug, so it aborts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tf_agent.h"

static tf_agent AGENT;
static int READY = 0;
static uint64_t TICK = 0;

double tf_platform_monotonic(void) { return (double)(TICK++) * 1e-3; }
double tf_platform_unix_time(void) { return 1.7e9 + (double)TICK; }
void tf_platform_random(uint8_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(TICK * 31u + i * 7u);
}
void tf_platform_log(const char *level, const char *message) {
    (void)level;
    (void)message;
}

static void setup(void) {
    static const uint16_t sizes[] = TF_HEAD_SIZES;
    static float x[16 * TF_HEAD_N_IN], y[16 * TF_HEAD_N_OUT];
    static int32_t labels[16];
    for (int i = 0; i < 16 * TF_HEAD_N_IN; i++) x[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
    for (int i = 0; i < 16 * TF_HEAD_N_OUT; i++) y[i] = (float)((i * 11) % 7) / 3.0f - 1.0f;
    for (int i = 0; i < 16; i++) labels[i] = i % TF_HEAD_N_OUT;
    tf_agent_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "fuzz-0";
    cfg.fleet = "fuzz";
    cfg.board = "host";
    cfg.lr = 0.01f;
    cfg.clip_norm = 10.0f;
    cfg.max_task_bytes = 65536;
    cfg.memory_bytes = -1;
    if (tf_agent_init(&AGENT, &cfg, sizes, TF_HEAD_N_SIZES, TF_HEAD_KIND, TF_HEAD_ACTIVATION, x,
                      TF_HEAD_KIND ? NULL : y, TF_HEAD_KIND ? labels : NULL, 16, 0.25) != 0)
        abort();
    for (uint32_t i = 0; i < AGENT.head.n_params; i++) AGENT.head.params[i] = 0.01f * (float)((int)(i % 13) - 6);
    READY = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tf_tensor tensors[8];
    static uint8_t bits[1 << 12];
    static float values[1 << 12];
    if (!READY) setup();
    tf_frame f;
    tf_error err;
    tf_scratch scratch = {bits, sizeof bits * 8};
    if (tf_frame_decode(data, size, 65536, &f, tensors, 8, scratch, &err) == TF_OK) {
        for (size_t i = 0; i < f.n_stored; i++) {
            tf_tensor_all_finite(&tensors[i]);
            if (tensors[i].size <= sizeof values / sizeof *values) tf_tensor_to_f32(&tensors[i], values);
        }
    }
    const uint8_t *reply = NULL;
    size_t n = tf_agent_handle(&AGENT, data, size, 0, &reply);
    if (n > 0) {
        static tf_tensor rt[TF_AGENT_MAX_TENSORS];
        static uint8_t rbits[1 << 12];
        tf_scratch rs = {rbits, sizeof rbits * 8};
        if (tf_frame_decode(reply, n, n, &f, rt, TF_AGENT_MAX_TENSORS, rs, &err) != TF_OK || f.type != TF_MSG_RESULT) {
            fprintf(stderr, "the agent answered with an invalid frame: %s\n", err.reason);
            abort();
        }
    }
    return 0;
}
