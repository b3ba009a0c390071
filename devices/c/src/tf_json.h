/* tf_json: a compact, bounds-checked, non-allocating JSON reader for tinyfleet frame headers.
 *
 * Why its own: frame headers are small JSON objects, a microcontroller has no heap to spare, and
 * the reader must reject exactly what Python's json.loads rejects (docs/protocol.md), so a device
 * and the server agree on which frames are malformed. A document is validated once
 * (tf_json_parse); afterwards values are spans into the caller's buffer that can be looked up,
 * iterated and converted without copying. Nothing here writes outside the caller's buffers.
 *
 * Accepted grammar: RFC 8259 plus the literals NaN, Infinity and -Infinity (as Python does), with
 * strict strings (no raw control characters) over UTF-8 that the caller has already checked
 * (tf_utf8_valid). Nesting deeper than TF_JSON_MAX_DEPTH is refused.
 */
#ifndef TF_JSON_H
#define TF_JSON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TF_JSON_MAX_DEPTH
#define TF_JSON_MAX_DEPTH 512
#endif

typedef enum {
    TF_JSON_NULL = 0,
    TF_JSON_FALSE,
    TF_JSON_TRUE,
    TF_JSON_NUMBER,
    TF_JSON_STRING,
    TF_JSON_ARRAY,
    TF_JSON_OBJECT
} tf_json_type;

/* One value: its type and the exact text span it occupies (strings include their quotes). */
typedef struct {
    tf_json_type type;
    const char *p;
    size_t n;
} tf_json;

/* Iterator over the members of an object or the items of an array. */
typedef struct {
    const char *p;   /* next unread character */
    const char *end; /* one past the closing bracket */
    int is_object;
} tf_json_iter;

/* A number: its value, and whether it is a JSON integer (no fraction, no exponent). */
typedef struct {
    double value;
    int is_int;      /* 1 for an integer literal */
    int int_fits;    /* 1 if the integer fits int64 (value_i is exact) */
    int64_t value_i;
} tf_json_num;

/* 1 if s[0..n) is strict UTF-8 (no overlong forms, no surrogates, <= U+10FFFF). */
int tf_utf8_valid(const uint8_t *s, size_t n);

/* Validate s[0..n) as exactly one JSON value surrounded by optional whitespace.
 * Returns 1 and fills *root, or 0 (malformed). */
int tf_json_parse(const char *s, size_t n, tf_json *root);

/* Look up `key` (compared after unescaping) in an object; the LAST occurrence wins, as in Python.
 * Returns 1 if found. */
int tf_json_get(const tf_json *obj, const char *key, tf_json *out);

void tf_json_iter_init(tf_json_iter *it, const tf_json *container);
/* Next member/item; for objects *key receives the key string value. Returns 0 at the end. */
int tf_json_iter_next(tf_json_iter *it, tf_json *key, tf_json *value);

/* Number of items (array) or members (object). */
size_t tf_json_count(const tf_json *container);

/* Convert a NUMBER value. NaN/Infinity literals give non-finite values with is_int = 0. */
int tf_json_number(const tf_json *v, tf_json_num *out);

/* 1 if the STRING value equals the NUL-terminated UTF-8 text `s` once unescaped. */
int tf_json_str_eq(const tf_json *v, const char *s);

/* Length of an unescaped STRING value in Unicode code points (a \uD83D\uDE00 pair counts 1),
 * the way Python's len() counts a decoded str. */
size_t tf_json_str_len(const tf_json *v);

/* The raw (still escaped) JSON text of the first `max_cp` code points of a STRING value, with
 * its quotes, so it can be copied verbatim into another JSON document (Python's s[:max_cp]).
 * Returns the number of bytes of the truncated literal, written to out if cap allows. */
size_t tf_json_str_prefix(const tf_json *v, size_t max_cp, char *out, size_t cap);

/* Unescape a STRING value into out (UTF-8, NUL-terminated). Returns 1 if it fit in cap. */
int tf_json_str_copy(const tf_json *v, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
