/* tf_agent: the protocol side of a tinyfleet device in portable C99, without any transport.
 *
 * It does what devices/agent.py's DeviceAgent does with one task payload: decode and check the
 * frame, answer a duplicate correlation id from the reply cache (never training twice), run
 * task.train / task.evaluate / task.adapt on the device's local data with the C learner, and build
 * exactly one result frame (an error result for anything malformed). The MQTT side (libmosquitto
 * on Linux: tf_agent_linux.c; any MQTT client on a microcontroller) only moves bytes and calls
 * tf_agent_handle. Every buffer is a member of tf_agent, sized by tf_config.h.
 *
 * It implements every config key the codec checks (the keys of devices/wire/frames.py's rules,
 * among them FedProx's proximal-mu and the clipping_norm of Flower's DP clipping, which adds the
 * metric norm_bit); a task whose `required` lists another key is refused with unsupported-config.
 * Results always carry run and round (copied, null when the task had none) and the metric names of
 * devices/wire/keys.py MetricKey.
 *
 * Differences from the Python agent, by design: task.deploy is answered with an error (a C
 * device flashes its backbone; it has no interpreter to self-test a new one), and the sample order
 * of a seeded round comes from a splitmix64 shuffle of (seed, crc32(device id), round), not from
 * numpy's generator (the server never depends on it).
 */
#ifndef TF_AGENT_H
#define TF_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "tf_codec.h"
#include "tf_learner.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TF_AGENT_MAX_SAMPLES
#define TF_AGENT_MAX_SAMPLES 256
#endif
#ifndef TF_AGENT_MAX_IN
#define TF_AGENT_MAX_IN TF_MAX_UNITS
#endif
#ifndef TF_AGENT_MAX_OUT
#define TF_AGENT_MAX_OUT 64
#endif
#ifndef TF_AGENT_CACHE_ENTRIES
#define TF_AGENT_CACHE_ENTRIES 256
#endif
#ifndef TF_AGENT_MAX_TASK_HEADER
#define TF_AGENT_MAX_TASK_HEADER TF_MAX_HEADER_BYTES
#endif
/* A reply: its header (the echoed run id is bounded by the task's header) plus the weights. */
#ifndef TF_AGENT_MAX_REPLY_BYTES
#define TF_AGENT_MAX_REPLY_BYTES (TF_AGENT_MAX_TASK_HEADER + 4096u + 8u * TF_MAX_PARAMS + 16u * TF_MAX_LAYERS)
#endif
/* The reply cache keeps replies back to back in one arena (oldest evicted first). */
#ifndef TF_AGENT_CACHE_BYTES
#define TF_AGENT_CACHE_BYTES (TF_AGENT_CACHE_ENTRIES * (1024u + 4u * TF_MAX_PARAMS))
#endif
#ifndef TF_AGENT_SPARSE_CHECK_ENTRIES
#define TF_AGENT_SPARSE_CHECK_ENTRIES (8u * TF_MAX_PARAMS)
#endif
#define TF_AGENT_MAX_TENSORS (2 * TF_MAX_LAYERS + 2)
#define TF_AGENT_MAX_METRICS 16

/* Hooks the platform provides. */
double tf_platform_monotonic(void);       /* seconds, for train-seconds */
double tf_platform_unix_time(void);       /* seconds since 1970, for "ts" */
void tf_platform_random(uint8_t *buf, size_t n);
void tf_platform_log(const char *level, const char *message);

typedef struct {
    const char *device_id;
    const char *fleet;
    const char *board;         /* presence "board" (NULL: left out) */
    uint32_t seed;
    float lr;                  /* the learner's default rate (adapt without lr): 0.01 */
    float clip_norm;           /* per-layer gradient clip: 10.0; <= 0 disables */
    size_t max_task_bytes;     /* larger tasks: too-large */
    int64_t ram_bytes, flash_bytes, memory_bytes; /* telemetry; memory_bytes < 0: unknown */
    const char *sensors[4];    /* telemetry "sensors" keys (the use case's sensor kinds) */
    int n_sensors;
} tf_agent_config;

typedef struct {
    char key[516];             /* the request id, unescaped */
    uint32_t off, len;         /* the reply's place in the cache arena */
} tf_agent_cache_slot;

typedef struct {
    tf_agent_config cfg;
    tf_head head;
    /* local data: the last n_eval samples are held out for evaluation (never trained on) */
    uint32_t n_samples, n_train, n_eval;
    float x[TF_AGENT_MAX_SAMPLES * TF_AGENT_MAX_IN];
    float y[TF_AGENT_MAX_SAMPLES * TF_AGENT_MAX_OUT]; /* regression targets */
    int32_t labels[TF_AGENT_MAX_SAMPLES];            /* classification labels */
    /* learning state */
    uint64_t samples_seen, tasks_done, errors_sent;
    double last_loss;
    int has_last_loss;
    uint64_t rng;
    uint32_t personal_mask;    /* layers with a device-own copy (TinyMetaFed local layers) */
    float personal[TF_MAX_PARAMS];
    float theta[TF_MAX_PARAMS];
    float backup[TF_MAX_PARAMS];
    uint32_t top_idx[TF_MAX_PARAMS];
    float top_val[TF_MAX_PARAMS];
    uint32_t perm[TF_AGENT_MAX_SAMPLES];
    tf_tensor tensors[TF_AGENT_MAX_TENSORS];
    uint8_t sparse_bits[(TF_AGENT_SPARSE_CHECK_ENTRIES + 7) / 8];
    tf_agent_cache_slot cache[TF_AGENT_CACHE_ENTRIES]; /* a ring, oldest at cache_head */
    uint32_t cache_head, cache_count;
    uint8_t cache_bytes[TF_AGENT_CACHE_BYTES];
    uint8_t out[TF_AGENT_MAX_REPLY_BYTES];
    double started;
} tf_agent;

/* Set up an agent: configuration, head layout (weights zero until set) and local data.
 * y: n x n_out targets (regression) or NULL; labels: n labels (classification) or NULL.
 * eval_fraction: tail kept for evaluation (0.2), as the Python agent does. Returns 0 or -1. */
int tf_agent_init(tf_agent *a, const tf_agent_config *cfg, const uint16_t *sizes, int n_sizes, int kind, int act,
                  const float *x, const float *y, const int32_t *labels, uint32_t n, double eval_fraction);

/* Handle one task payload. Returns the reply length (0: no reply) and sets *reply to it (a
 * cached reply for a duplicate id). max_packet: the broker's maximum packet size (0: none); a
 * reply that would not fit is replaced by a too-large error, as the Python agent does. */
size_t tf_agent_handle(tf_agent *a, const uint8_t *payload, size_t n, size_t max_packet, const uint8_t **reply);

/* Presence document (online or not, with an optional reason) into buf; returns its length. */
size_t tf_agent_presence(const tf_agent *a, int online, const char *reason, uint8_t *buf, size_t cap);
/* Telemetry document into buf; returns its length. */
size_t tf_agent_telemetry(const tf_agent *a, uint8_t *buf, size_t cap);

/* Topic of kind ("td", "presence", "telemetry", "task", "result") into buf. */
int tf_agent_topic(const tf_agent *a, const char *kind, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
