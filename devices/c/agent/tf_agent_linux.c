/* tf-agent: a tinyfleet device for Linux-class hardware (a Raspberry Pi, or the host in tests) on
 * libmosquitto. Usage: tf-agent CONFIG.json [--verbose]
 *
 * CONFIG.json (paths relative to its folder):
 *   {"device": "c-0001", "fleet": "lab", "broker": "mqtt://127.0.0.1:1883",
 *    "credentials": "c-0001.credentials.json",  -- {"username", "password", "ca", "cert", "key"}; kept
 *                                                   out of the source tree, readable by the device only
 *    "td": "td.json", "head": "head.tfb", "data": "data.tfb",  -- frame files (docs/firmware.md)
 *    "kind": "regression" | "classification", "activation": "relu" | "tanh", "board": "rpi4",
 *    "ram-bytes": N, "flash-bytes": N, "memory-bytes": N, "telemetry-s": 10, "seed": 0, "lr": 0.01,
 *    "clip-norm": 10, "eval-fraction": 0.2, "max-task-bytes": 4194304, "sensors": ["scalar-signal"]}
 *
 * Lifecycle (docs/protocol.md §3): CONNECT (MQTT v5) with the Last Will on presence; after CONNACK
 * subscribe to the task topic, publish the TD and presence online (retained); telemetry every
 * telemetry-s; one result per task; SIGTERM/SIGINT: presence offline "shutdown", wait for its
 * PUBACK, DISCONNECT. A lost connection is retried with exponential backoff (0.5 s to 30 s, +-50 %).
 * Exit codes: 0 clean stop, 2 bad configuration, 3 the broker refused the credentials.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "tf_agent.h"

static tf_agent AGENT; /* the whole device state: static, sized by tf_config.h */
static volatile sig_atomic_t STOP = 0;
static int VERBOSE = 0;
static int CONNECTED_ONCE = 0;
static int REFUSED = 0;
static int BYE_MID = -1, BYE_ACKED = 0;
static size_t MAX_PACKET = 0;
static char T_TASK[256], T_RESULT[256], T_PRESENCE[256], T_TD[256], T_TELEMETRY[256];
static char *TD_TEXT = NULL;
static size_t TD_LEN = 0;
static uint8_t DOC[8192];

/* ------------------------------------------------------------------------------------ platform */
double tf_platform_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double tf_platform_unix_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void tf_platform_random(uint8_t *buf, size_t n) {
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL || fread(buf, 1, n, f) != n) { /* never reached on Linux; still give distinct ids */
        static uint64_t c = 0;
        uint64_t s = (uint64_t)(tf_platform_unix_time() * 1e6) ^ ++c;
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(s >> (8 * (i % 8))) ^ (uint8_t)i;
    }
    if (f != NULL) fclose(f);
}

void tf_platform_log(const char *level, const char *message) {
    if (VERBOSE || strcmp(level, "info") != 0)
        fprintf(stderr, "tf-agent %s: %s: %s\n", AGENT.cfg.device_id ? AGENT.cfg.device_id : "?", level, message);
}

static void die(int code, const char *what, const char *detail) {
    fprintf(stderr, "error: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(code);
}

/* ------------------------------------------------------------------------------------ files */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (buf == NULL) break;
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = realloc(buf, cap * 2 + 1);
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

static char DIR_OF_CONFIG[1024];

static const char *resolve(const char *rel, char *out, size_t cap) {
    if (rel[0] == '/' || DIR_OF_CONFIG[0] == '\0') {
        snprintf(out, cap, "%s", rel);
    } else {
        snprintf(out, cap, "%s/%s", DIR_OF_CONFIG, rel);
    }
    return out;
}

static tf_json CONFIG;

static const char *cfg_str(const char *key, char *out, size_t cap, int required) {
    tf_json v;
    if (!tf_json_get(&CONFIG, key, &v) || v.type != TF_JSON_STRING) {
        if (required) die(2, "config needs a string field", key);
        return NULL;
    }
    if (!tf_json_str_copy(&v, out, cap)) die(2, "config field too long", key);
    return out;
}

static double cfg_num(const char *key, double fallback) {
    tf_json v;
    tf_json_num num;
    if (!tf_json_get(&CONFIG, key, &v)) return fallback;
    if (!tf_json_number(&v, &num)) die(2, "config field must be a number", key);
    return num.value;
}

/* A frame file (a tinyfleet frame of type task.evaluate, docs/firmware.md): its tensors. */
static size_t load_frame_file(const char *path, tf_tensor *tensors, size_t cap, uint8_t **keep) {
    size_t len = 0;
    char *buf = read_file(path, &len);
    if (buf == NULL) die(2, "cannot read frame file", path);
    tf_frame f;
    tf_error err;
    static uint8_t bits[1];
    tf_scratch scratch = {bits, 0};
    if (tf_frame_decode((const uint8_t *)buf, len, (size_t)-1, &f, tensors, cap, scratch, &err) != TF_OK)
        die(2, path, err.reason);
    *keep = (uint8_t *)buf;
    return f.n_stored;
}

static int tensor_named(const tf_tensor *t, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (tf_json_str_eq(&t[i].name, name)) return (int)i;
    return -1;
}

/* ------------------------------------------------------------------------------------ MQTT */
static void publish(struct mosquitto *m, const char *topic, const void *p, size_t n, int qos, int retain, int *mid) {
    int rc = mosquitto_publish(m, mid, topic, (int)n, p, qos, retain);
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) tf_platform_log("warning", mosquitto_strerror(rc));
}

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *props) {
    (void)obj;
    (void)flags;
    if (rc != 0) {
        fprintf(stderr, "tf-agent %s: connection refused: %s\n", AGENT.cfg.device_id, mosquitto_reason_string(rc));
        if (!CONNECTED_ONCE && (rc == MQTT_RC_NOT_AUTHORIZED || rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD ||
                                rc == MQTT_RC_CLIENTID_NOT_VALID))
            REFUSED = 1;
        return;
    }
    CONNECTED_ONCE = 1;
    uint32_t max_packet = 0;
    MAX_PACKET = mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &max_packet, false) ? max_packet : 0;
    int fd = mosquitto_socket(m), one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* ~10x faster rounds */
    mosquitto_subscribe(m, NULL, T_TASK, 1);
    if (TD_TEXT != NULL) publish(m, T_TD, TD_TEXT, TD_LEN, 1, 1, NULL);
    size_t n = tf_agent_presence(&AGENT, 1, NULL, DOC, sizeof DOC);
    publish(m, T_PRESENCE, DOC, n, 1, 1, NULL);
    tf_platform_log("info", "online");
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
    (void)obj;
    (void)props;
    if (strcmp(msg->topic, T_TASK) != 0) {
        tf_platform_log("warning", "ignoring a message on a foreign topic");
        return;
    }
    const uint8_t *reply = NULL;
    size_t n = tf_agent_handle(&AGENT, msg->payload, (size_t)msg->payloadlen, MAX_PACKET, &reply);
    if (n > 0) publish(m, T_RESULT, reply, n, 1, 0, NULL);
}

static void on_publish(struct mosquitto *m, void *obj, int mid, int rc, const mosquitto_property *props) {
    (void)m;
    (void)obj;
    (void)rc;
    (void)props;
    if (mid == BYE_MID) BYE_ACKED = 1;
}

static void on_signal(int sig) {
    (void)sig;
    STOP = 1;
}

static int parse_url(const char *url, char *host, size_t cap, int *port, int *tls) {
    const char *rest;
    if (strncmp(url, "mqtt://", 7) == 0) {
        *tls = 0;
        rest = url + 7;
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        *tls = 1;
        rest = url + 8;
    } else {
        return -1;
    }
    const char *colon = strrchr(rest, ':');
    size_t hlen = colon ? (size_t)(colon - rest) : strlen(rest);
    if (hlen == 0 || hlen >= cap) return -1;
    memcpy(host, rest, hlen);
    host[hlen] = '\0';
    *port = *tls ? 8883 : 1883;
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if ((*end != '\0' && strcmp(end, "/") != 0) || p < 1 || p > 65535) return -1;
        *port = (int)p;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) die(2, "usage: tf-agent CONFIG.json [--verbose]", NULL);
    VERBOSE = argc > 2 && strcmp(argv[2], "--verbose") == 0;
    size_t clen;
    char *ctext = read_file(argv[1], &clen);
    if (ctext == NULL) die(2, "cannot read config", argv[1]);
    if (!tf_utf8_valid((const uint8_t *)ctext, clen) || !tf_json_parse(ctext, clen, &CONFIG) ||
        CONFIG.type != TF_JSON_OBJECT)
        die(2, "config is not a JSON object", argv[1]);
    const char *slash = strrchr(argv[1], '/');
    if (slash != NULL) snprintf(DIR_OF_CONFIG, sizeof DIR_OF_CONFIG, "%.*s", (int)(slash - argv[1]), argv[1]);

    static char device[72], fleet[72], board[72], url[512], host[256], kind[32], act[32], path[1024], sensor[72];
    static char user[256], pass[256], ca[1024], cert[1024], key[1024], cpath[2200];
    cfg_str("device", device, sizeof device, 1);
    cfg_str("fleet", fleet, sizeof fleet, 1);
    cfg_str("broker", url, sizeof url, 1);
    int port, tls;
    if (parse_url(url, host, sizeof host, &port, &tls) != 0) die(2, "broker must look like mqtt://host:port", url);
    if (!cfg_str("board", board, sizeof board, 0)) board[0] = '\0';
    if (!cfg_str("kind", kind, sizeof kind, 0)) strcpy(kind, "regression");
    if (!cfg_str("activation", act, sizeof act, 0)) strcpy(act, "relu");
    int is_cls = strcmp(kind, "classification") == 0;
    if (!is_cls && strcmp(kind, "regression") != 0) die(2, "kind must be regression or classification", kind);
    if (strcmp(act, "relu") != 0 && strcmp(act, "tanh") != 0) die(2, "activation must be relu or tanh", act);

    tf_agent_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = device;
    cfg.fleet = fleet;
    cfg.board = board;
    cfg.seed = (uint32_t)cfg_num("seed", 0);
    cfg.lr = (float)cfg_num("lr", 0.01);
    cfg.clip_norm = (float)cfg_num("clip-norm", 10.0);
    cfg.max_task_bytes = (size_t)cfg_num("max-task-bytes", TF_DEFAULT_MAX_FRAME_BYTES);
    cfg.ram_bytes = (int64_t)cfg_num("ram-bytes", 0);
    cfg.flash_bytes = (int64_t)cfg_num("flash-bytes", 0);
    cfg.memory_bytes = (int64_t)cfg_num("memory-bytes", -1);
    tf_json sensors, item;
    if (tf_json_get(&CONFIG, "sensors", &sensors) && sensors.type == TF_JSON_ARRAY) {
        tf_json_iter it;
        tf_json_iter_init(&it, &sensors);
        if (tf_json_iter_next(&it, NULL, &item) && tf_json_str_copy(&item, sensor, sizeof sensor)) {
            cfg.sensors[0] = sensor;
            cfg.n_sensors = 1;
        }
    }

    /* head: tensors w0, b0, w1, b1, ... give the layer sizes */
    static tf_tensor ht[TF_AGENT_MAX_TENSORS], dt[4];
    uint8_t *hbuf, *dbuf;
    size_t nh = load_frame_file(resolve(cfg_str("head", path, sizeof path, 1), cpath, sizeof cpath), ht,
                                TF_AGENT_MAX_TENSORS, &hbuf);
    if (nh < 2 || nh % 2 || nh / 2 > TF_MAX_LAYERS) die(2, "head file must hold w0, b0, w1, b1, ...", cpath);
    uint16_t sizes[TF_MAX_LAYERS + 1];
    for (size_t l = 0; l < nh / 2; l++) {
        if (ht[2 * l].ndim != 2 || ht[2 * l + 1].ndim != 1 || (l > 0 && ht[2 * l].shape[0] != sizes[l]))
            die(2, "head file: layer shapes do not chain", cpath);
        sizes[l] = (uint16_t)ht[2 * l].shape[0];
        sizes[l + 1] = (uint16_t)ht[2 * l].shape[1];
    }
    /* data: x (n, in) float32 and y (n, out) float32 or labels (n,) int */
    size_t nd = load_frame_file(resolve(cfg_str("data", path, sizeof path, 1), cpath, sizeof cpath), dt, 4, &dbuf);
    int ix = tensor_named(dt, nd, "x"), iy = tensor_named(dt, nd, "y");
    if (ix < 0 || iy < 0) die(2, "data file needs tensors x and y", cpath);
    const uint32_t n = (uint32_t)dt[ix].shape[0];
    if (n == 0 || n > TF_AGENT_MAX_SAMPLES) die(2, "data file: sample count exceeds TF_AGENT_MAX_SAMPLES", cpath);
    if (dt[ix].size != (uint64_t)n * sizes[0]) die(2, "data file: x does not match the head's inputs", cpath);
    static float xs[TF_AGENT_MAX_SAMPLES * TF_AGENT_MAX_IN], ys[TF_AGENT_MAX_SAMPLES * TF_AGENT_MAX_OUT];
    static int32_t labels[TF_AGENT_MAX_SAMPLES];
    tf_tensor_to_f32(&dt[ix], xs);
    if (dt[iy].size > (uint64_t)TF_AGENT_MAX_SAMPLES * TF_AGENT_MAX_OUT) die(2, "data file: y is too large", cpath);
    tf_tensor_to_f32(&dt[iy], ys);
    if (is_cls) {
        if (dt[iy].size != n) die(2, "data file: classification y must hold one label per sample", cpath);
        for (uint32_t i = 0; i < n; i++) labels[i] = (int32_t)ys[i];
    } else if (dt[iy].size != (uint64_t)n * sizes[nh / 2]) {
        die(2, "data file: y does not match the head's outputs", cpath);
    }
    if (tf_agent_init(&AGENT, &cfg, sizes, (int)(nh / 2 + 1), is_cls, strcmp(act, "tanh") == 0 ? TF_ACT_TANH : TF_ACT_RELU,
                      xs, is_cls ? NULL : ys, is_cls ? labels : NULL, n, cfg_num("eval-fraction", 0.2)) != 0)
        die(2, "head or data exceed this build's capacity (tf_config.h)", NULL);
    size_t off = 0;
    for (size_t i = 0; i < nh; i++) {
        tf_tensor_to_f32(&ht[i], AGENT.head.params + off);
        off += (size_t)ht[i].size;
    }
    if (cfg_str("td", path, sizeof path, 0)) {
        TD_TEXT = read_file(resolve(path, cpath, sizeof cpath), &TD_LEN);
        if (TD_TEXT == NULL) die(2, "cannot read TD", cpath);
    }
    user[0] = pass[0] = ca[0] = cert[0] = key[0] = '\0';
    if (cfg_str("credentials", path, sizeof path, 0)) { /* read from its own file, never from the config */
        size_t len;
        char *text = read_file(resolve(path, cpath, sizeof cpath), &len);
        tf_json doc, v;
        if (text == NULL) die(2, "cannot read credentials file", cpath);
        if (!tf_json_parse(text, len, &doc) || doc.type != TF_JSON_OBJECT) die(2, "credentials file is not JSON", cpath);
        if (!tf_json_get(&doc, "username", &v) || !tf_json_str_copy(&v, user, sizeof user) ||
            !tf_json_get(&doc, "password", &v) || !tf_json_str_copy(&v, pass, sizeof pass))
            die(2, "credentials file needs string fields username and password", cpath);
        if (tf_json_get(&doc, "ca", &v) && v.type == TF_JSON_STRING) tf_json_str_copy(&v, ca, sizeof ca);
        if (tf_json_get(&doc, "cert", &v) && v.type == TF_JSON_STRING) tf_json_str_copy(&v, cert, sizeof cert);
        if (tf_json_get(&doc, "key", &v) && v.type == TF_JSON_STRING) tf_json_str_copy(&v, key, sizeof key);
        memset(text, 0, len);
        free(text);
    }
    tf_agent_topic(&AGENT, "task", T_TASK, sizeof T_TASK);
    tf_agent_topic(&AGENT, "result", T_RESULT, sizeof T_RESULT);
    tf_agent_topic(&AGENT, "presence", T_PRESENCE, sizeof T_PRESENCE);
    tf_agent_topic(&AGENT, "td", T_TD, sizeof T_TD);
    tf_agent_topic(&AGENT, "telemetry", T_TELEMETRY, sizeof T_TELEMETRY);

    /* sigaction, not signal(): under -std=c99 with only _POSIX_C_SOURCE, glibc's signal() has System V
     * semantics and resets the handler after one delivery, so a second SIGTERM during the clean stop (the
     * offline message waiting for its PUBACK) killed the device mid-goodbye (exit -15 seen in CI). */
    struct sigaction stop_action;
    memset(&stop_action, 0, sizeof stop_action);
    stop_action.sa_handler = on_signal;
    sigemptyset(&stop_action.sa_mask);
    sigaction(SIGTERM, &stop_action, NULL);
    sigaction(SIGINT, &stop_action, NULL);
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(device, true, NULL);
    if (m == NULL) die(2, "cannot create the MQTT client", device);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    if (user[0]) mosquitto_username_pw_set(m, user, pass);
    memset(pass, 0, sizeof pass);
    if (tls && mosquitto_tls_set(m, ca[0] ? ca : NULL, ca[0] ? NULL : "/etc/ssl/certs", cert[0] ? cert : NULL,
                                 key[0] ? key : NULL, NULL) != MOSQ_ERR_SUCCESS)
        die(2, "TLS set-up failed", ca);
    size_t wn = tf_agent_presence(&AGENT, 0, "connection lost", DOC, sizeof DOC);
    mosquitto_will_set_v5(m, T_PRESENCE, (int)wn, DOC, 1, true, NULL);
    mosquitto_connect_v5_callback_set(m, on_connect);
    mosquitto_message_v5_callback_set(m, on_message);
    mosquitto_publish_v5_callback_set(m, on_publish);

    const double telemetry_s = cfg_num("telemetry-s", 10.0);
    uint8_t r;
    tf_platform_random(&r, 1);
    double next_telemetry = tf_platform_monotonic() + telemetry_s * (0.5 + r / 510.0);
    double backoff = 0.5;
    int rc = mosquitto_connect(m, host, port, 60);
    while (!STOP) {
        if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_loop(m, 100, 1);
        if (REFUSED) die(3, "the broker refused this device's credentials", device);
        if (rc != MOSQ_ERR_SUCCESS) { /* lost or never made: back off, then reconnect */
            tf_platform_random(&r, 1);
            double wait = backoff * (0.5 + r / 255.0);
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            tf_platform_log("info", "connection lost: reconnecting");
            nanosleep(&ts, NULL);
            backoff = backoff * 2 > 30 ? 30 : backoff * 2;
            rc = CONNECTED_ONCE ? mosquitto_reconnect(m) : mosquitto_connect(m, host, port, 60);
            continue;
        }
        backoff = 0.5;
        if (telemetry_s > 0 && tf_platform_monotonic() >= next_telemetry) {
            next_telemetry = tf_platform_monotonic() + telemetry_s;
            size_t tn = tf_agent_telemetry(&AGENT, DOC, sizeof DOC);
            if (tn) publish(m, T_TELEMETRY, DOC, tn, 0, 0, NULL);
        }
    }
    /* clean stop: a clean DISCONNECT does not fire the Will, so say offline explicitly */
    fprintf(stderr, "tf-agent %s: stopping: saying offline\n", device);
    size_t bn = tf_agent_presence(&AGENT, 0, "shutdown", DOC, sizeof DOC);
    publish(m, T_PRESENCE, DOC, bn, 1, 1, &BYE_MID);
    double deadline = tf_platform_monotonic() + 5.0;
    while (!BYE_ACKED && tf_platform_monotonic() < deadline && mosquitto_loop(m, 100, 1) == MOSQ_ERR_SUCCESS) {
    }
    mosquitto_disconnect(m);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    free(hbuf);
    free(dbuf);
    fprintf(stderr, "tf-agent %s: stopped (%llu tasks, %llu errors)\n", device, (unsigned long long)AGENT.tasks_done,
            (unsigned long long)AGENT.errors_sent);
    return 0;
}
