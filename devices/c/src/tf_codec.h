/* tf_codec: the tinyfleet v1 binary frame codec in C99 (docs/protocol.md §4), no heap.
 *
 * A frame is `u32 LE header_len | UTF-8 JSON header | data section`; tensors live at 8-byte
 * aligned offsets of the data section, dense or sparse (uint16/uint32 flat indices, index block
 * padded to 4 bytes, then values). Decoding checks every field, in the same order and with the
 * same error codes as devices/wire/frames.py, before any tensor byte is read; tensors stay in the
 * caller's buffer (values are read with memcpy, so no alignment is assumed). Encoding writes a
 * header with a JSON writer and then the data section into one caller buffer.
 */
#ifndef TF_CODEC_H
#define TF_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "tf_json.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TF_PROTOCOL_VERSION 1
#define TF_MAX_HEADER_BYTES 65536u
#define TF_DEFAULT_MAX_FRAME_BYTES (4u * 1024u * 1024u)
#define TF_MAX_DIMS 8
#define TF_UINT16_MAX_ENTRIES 65536u
#define TF_MAX_STEPS 100000
#define TF_REASON_BYTES 200

typedef enum {
    TF_MSG_TRAIN = 0,
    TF_MSG_EVALUATE,
    TF_MSG_DEPLOY,
    TF_MSG_ADAPT,
    TF_MSG_RESULT,
    TF_MSG_COUNT
} tf_msg_type;

typedef enum {
    TF_OK = 0,
    TF_E_BAD_VERSION,
    TF_E_MALFORMED,
    TF_E_UNKNOWN_TYPE,
    TF_E_BAD_CONFIG,
    TF_E_BAD_SHAPE,
    TF_E_NOT_FINITE,
    TF_E_TOO_LARGE,
    TF_E_NO_MODEL,
    TF_E_SHA_MISMATCH,
    TF_E_SELF_TEST_FAILED,
    TF_E_DOES_NOT_FIT,
    TF_E_UNSUPPORTED_CONFIG,
    TF_E_INTERNAL,
    TF_E_COUNT
} tf_err_code;

typedef enum {
    TF_FLOAT32 = 0,
    TF_FLOAT64,
    TF_FLOAT16,
    TF_INT8,
    TF_UINT8,
    TF_INT16,
    TF_UINT16,
    TF_INT32,
    TF_UINT32,
    TF_INT64,
    TF_DTYPE_COUNT
} tf_dtype;

extern const char *const tf_msg_names[TF_MSG_COUNT];   /* "task.train", ... "result" */
extern const char *const tf_err_names[TF_E_COUNT];     /* "", "bad-version", ... "internal" */
extern const char *const tf_dtype_names[TF_DTYPE_COUNT];
extern const uint8_t tf_dtype_size[TF_DTYPE_COUNT];

/* One decoded tensor entry: a view into the frame. */
typedef struct {
    tf_json name;             /* the name string token */
    tf_dtype dtype;           /* value dtype */
    uint8_t ndim;
    uint8_t sparse;
    uint8_t index_u16;        /* sparse: 1 = uint16 indices, 0 = uint32 */
    uint64_t shape[TF_MAX_DIMS];
    uint64_t size;            /* product of the shape */
    uint64_t nnz;             /* sparse: stored entries */
    const uint8_t *data;      /* nbytes at offset of the data section */
    size_t nbytes;
} tf_tensor;

/* A decoded frame: spans into the caller's payload. */
typedef struct {
    tf_json header;           /* root object */
    tf_msg_type type;
    tf_json id;               /* correlation id string (1-128 code points) */
    int has_run;              /* "run" is a string: echoed in results */
    tf_json run;
    int has_round;            /* "round" is an integer >= 0: echoed in results */
    tf_json round;
    int has_config;
    tf_json config;           /* the config object (absent: has_config = 0) */
    size_t n_tensors;         /* entries in the header (may exceed the caller's capacity) */
    size_t n_stored;          /* entries stored in the caller's tensor array */
    const uint8_t *data;
    size_t data_len;
} tf_frame;

/* Why a frame was refused: the protocol error code, the request id if readable, one line. */
typedef struct {
    tf_err_code code;
    int has_rid;
    tf_json rid;              /* string token; replies echo its first 128 code points */
    char reason[TF_REASON_BYTES];
} tf_error;

/* Scratch memory the decoder may use to check that sparse indices are unique. */
typedef struct {
    uint8_t *bits;
    uint64_t n_bits;          /* tensors up to this many entries are checked exactly; larger
                                 ones must list their indices in ascending order */
} tf_scratch;

/* Decode and check one frame. Returns TF_OK and fills *f (and up to max_tensors entries of
 * tensors[]), or an error code with *err filled. */
tf_err_code tf_frame_decode(const uint8_t *buf, size_t n, size_t max_bytes, tf_frame *f, tf_tensor *tensors,
                            size_t max_tensors, tf_scratch scratch, tf_error *err);

/* 1 if `key` (a string token) is a config key the decoder checks for this task type: the keys a
 * device built on this codec implements (devices/wire/frames.py implemented_config). */
int tf_config_key_known(tf_msg_type type, const tf_json *key);

/* The id of a frame too large to decode, read from its header only (NULL-safe; 0 if none). */
int tf_frame_peek_id(const uint8_t *buf, size_t n, tf_json *id);

/* not-finite check of every floating tensor (float16/32/64); 1 if all values are finite. */
int tf_tensor_all_finite(const tf_tensor *t);

/* 0 if numpy could not hold the tensor (product of its non-zero dims x itemsize > INT64_MAX). */
int tf_tensor_numpy_ok(const tf_tensor *t);

/* Expand a tensor (any dtype, dense or sparse) into `size` float32 values (zeros elsewhere). */
void tf_tensor_to_f32(const tf_tensor *t, float *out);

void tf_error_set(tf_error *err, tf_err_code code, const tf_json *rid, const char *reason);

/* ------------------------------------------------------------------------------------ writing */
#ifndef TF_WRITER_DEPTH
#define TF_WRITER_DEPTH 8
#endif

/* A JSON/frame writer into one caller buffer; on overflow it stops writing and sets overflow. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int overflow;
    int depth;
    uint8_t need_comma[TF_WRITER_DEPTH];
    size_t frame_start;       /* offset of the u32 length prefix (frames) */
} tf_writer;

void tf_w_init(tf_writer *w, uint8_t *buf, size_t cap);
void tf_w_raw(tf_writer *w, const void *p, size_t n);
void tf_w_key(tf_writer *w, const char *key);      /* comma if needed, then "key": (key NULL: item) */
void tf_w_obj_begin(tf_writer *w, const char *key);
void tf_w_obj_end(tf_writer *w);
void tf_w_arr_begin(tf_writer *w, const char *key);
void tf_w_arr_end(tf_writer *w);
void tf_w_str(tf_writer *w, const char *key, const char *value); /* escaped JSON string */
void tf_w_num(tf_writer *w, const char *key, double value);      /* null if not finite */
void tf_w_int(tf_writer *w, const char *key, int64_t value);
void tf_w_bool(tf_writer *w, const char *key, int value);
void tf_w_null(tf_writer *w, const char *key);
void tf_w_json(tf_writer *w, const char *key, const char *text, size_t n); /* a raw JSON value */

/* Format a finite double as a JSON number (at most 17 significant digits); returns its length. */
size_t tf_fmt_double(double v, char *out, size_t cap);

/* One tensor to write: float32 values, dense (size values) or sparse (nnz indices + values). */
typedef struct {
    const char *name;
    uint8_t ndim;
    uint32_t shape[TF_MAX_DIMS];
    const float *values;
    const uint32_t *indices;  /* sparse only, ascending */
    uint32_t nnz;
    uint8_t sparse;
} tf_out_tensor;

/* Start a frame: the length prefix placeholder and the header's opening brace. */
void tf_frame_begin(tf_writer *w);
/* Append "tensors": [...], close the header, patch its length and write the data section.
 * Returns the frame length, or 0 if the buffer was too small. */
size_t tf_frame_finish(tf_writer *w, const tf_out_tensor *tensors, size_t n);

#ifdef __cplusplus
}
#endif
#endif
