/* tf_json: see tf_json.h. Iterative (no recursion): nesting is tracked in a bit stack. */
#include "tf_json.h"

#include <math.h>
#include <string.h>

int tf_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0; /* overlong */
        if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                                         /* surrogate */
        i += len;
    }
    return 1;
}

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return c - 'A' + 10;
}

/* p at the opening quote; returns one past the closing quote, or NULL if malformed. */
static const char *scan_string(const char *p, const char *e) {
    p++;
    while (p < e) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (e - p < 2) return NULL;
            char x = p[1];
            if (x == 'u') {
                if (e - p < 6) return NULL;
                for (int k = 2; k < 6; k++)
                    if (!is_hex(p[k])) return NULL;
                p += 6;
            } else if (x == '"' || x == '\\' || x == '/' || x == 'b' || x == 'f' || x == 'n' || x == 'r' ||
                       x == 't') {
                p += 2;
            } else {
                return NULL;
            }
            continue;
        }
        p++;
    }
    return NULL;
}

static int lit(const char *p, const char *e, const char *word) {
    size_t n = strlen(word);
    return (size_t)(e - p) >= n && memcmp(p, word, n) == 0;
}

/* p at the first character of a number or NaN/Infinity literal; returns its end or NULL. */
static const char *scan_number(const char *p, const char *e) {
    if (lit(p, e, "NaN")) return p + 3;
    if (lit(p, e, "Infinity")) return p + 8;
    if (lit(p, e, "-Infinity")) return p + 9;
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && *p >= '0' && *p <= '9') p++;
    } else {
        return NULL;
    }
    if (p < e && *p == '.') {
        p++;
        if (p >= e || *p < '0' || *p > '9') return NULL;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') return NULL;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    return p;
}

static tf_json_type type_of(char c) {
    switch (c) {
        case '"': return TF_JSON_STRING;
        case '{': return TF_JSON_OBJECT;
        case '[': return TF_JSON_ARRAY;
        case 't': return TF_JSON_TRUE;
        case 'f': return TF_JSON_FALSE;
        case 'n': return TF_JSON_NULL;
        default: return TF_JSON_NUMBER;
    }
}

/* End of the (already validated) value starting at p. */
static const char *value_end(const char *p, const char *e) {
    char c = *p;
    if (c == '"') return scan_string(p, e);
    if (c == '{' || c == '[') {
        int depth = 0;
        while (p < e) {
            char x = *p;
            if (x == '"') {
                p = scan_string(p, e);
                if (p == NULL) return e;
                continue;
            }
            if (x == '{' || x == '[') depth++;
            if (x == '}' || x == ']') {
                depth--;
                if (depth == 0) return p + 1;
            }
            p++;
        }
        return e;
    }
    if (c == 't') return p + 4;
    if (c == 'f') return p + 5;
    if (c == 'n') return p + 4;
    const char *q = scan_number(p, e);
    return q ? q : e;
}

int tf_json_parse(const char *s, size_t n, tf_json *root) {
    const char *e = s + n;
    const char *p = skip_ws(s, e);
    uint8_t stack[TF_JSON_MAX_DEPTH / 8 + 1]; /* bit d = 1: level d is an object */
    int depth = 0;
    const char *start = p;
    enum { VALUE, AFTER, KEY } state = VALUE;
    if (p >= e) return 0;
    for (;;) {
        if (state == KEY) { /* expecting a member name, then ':' */
            if (p >= e || *p != '"') return 0;
            p = scan_string(p, e);
            if (p == NULL) return 0;
            p = skip_ws(p, e);
            if (p >= e || *p != ':') return 0;
            p = skip_ws(p + 1, e);
            state = VALUE;
            continue;
        }
        if (state == VALUE) {
            if (p >= e) return 0;
            char c = *p;
            if (c == '{' || c == '[') {
                if (depth >= TF_JSON_MAX_DEPTH) return 0;
                if (c == '{')
                    stack[depth / 8] |= (uint8_t)(1u << (depth % 8));
                else
                    stack[depth / 8] &= (uint8_t)~(1u << (depth % 8));
                depth++;
                p = skip_ws(p + 1, e);
                if (p < e && *p == (c == '{' ? '}' : ']')) {
                    depth--;
                    p++;
                    state = AFTER;
                } else {
                    state = c == '{' ? KEY : VALUE;
                }
                continue;
            }
            if (c == '"') {
                p = scan_string(p, e);
            } else if (c == 't') {
                p = lit(p, e, "true") ? p + 4 : NULL;
            } else if (c == 'f') {
                p = lit(p, e, "false") ? p + 5 : NULL;
            } else if (c == 'n') {
                p = lit(p, e, "null") ? p + 4 : NULL;
            } else {
                p = scan_number(p, e);
            }
            if (p == NULL) return 0;
            state = AFTER;
            continue;
        }
        /* AFTER a value */
        if (depth == 0) {
            const char *end = p;
            p = skip_ws(p, e);
            if (p != e) return 0;
            root->type = type_of(*start);
            root->p = start;
            root->n = (size_t)(end - start);
            return 1;
        }
        p = skip_ws(p, e);
        if (p >= e) return 0;
        int in_object = (stack[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
        if (*p == ',') {
            p = skip_ws(p + 1, e);
            state = in_object ? KEY : VALUE;
        } else if (*p == (in_object ? '}' : ']')) {
            depth--;
            p++;
        } else {
            return 0;
        }
    }
}

void tf_json_iter_init(tf_json_iter *it, const tf_json *c) {
    it->is_object = c->type == TF_JSON_OBJECT;
    if (c->type != TF_JSON_OBJECT && c->type != TF_JSON_ARRAY) {
        it->p = it->end = c->p;
        return;
    }
    it->p = c->p + 1;
    it->end = c->p + c->n;
}

static void make_value(tf_json *v, const char *p, const char *e) {
    const char *q = value_end(p, e);
    v->type = type_of(*p);
    v->p = p;
    v->n = (size_t)(q - p);
}

int tf_json_iter_next(tf_json_iter *it, tf_json *key, tf_json *value) {
    const char *e = it->end;
    const char *p = skip_ws(it->p, e);
    if (p >= e || *p == '}' || *p == ']') {
        it->p = e;
        return 0;
    }
    if (it->is_object) {
        tf_json k;
        make_value(&k, p, e);
        if (key) *key = k;
        p = skip_ws(p + k.n, e);
        p = skip_ws(p + 1, e); /* ':' */
    }
    tf_json v;
    make_value(&v, p, e);
    if (value) *value = v;
    p = skip_ws(p + v.n, e);
    if (p < e && *p == ',') p++;
    it->p = p;
    return 1;
}

size_t tf_json_count(const tf_json *c) {
    tf_json_iter it;
    size_t n = 0;
    tf_json_iter_init(&it, c);
    while (tf_json_iter_next(&it, NULL, NULL)) n++;
    return n;
}

int tf_json_get(const tf_json *obj, const char *key, tf_json *out) {
    if (obj->type != TF_JSON_OBJECT) return 0;
    tf_json_iter it;
    tf_json k, v;
    int found = 0;
    tf_json_iter_init(&it, obj);
    while (tf_json_iter_next(&it, &k, &v)) {
        if (tf_json_str_eq(&k, key)) {
            *out = v;
            found = 1;
        }
    }
    return found;
}

/* ------------------------------------------------------------------------------------- strings */
/* Decode one character of a string body at *pp: returns its code point and advances *pp. Raw
 * UTF-8 is decoded; an escaped surrogate pair becomes one code point, a lone surrogate stays. */
static uint32_t next_cp(const char **pp, const char *e) {
    const unsigned char *p = (const unsigned char *)*pp;
    uint32_t cp;
    if (*p == '\\') {
        char x = (char)p[1];
        if (x != 'u') {
            *pp += 2;
            switch (x) {
                case 'b': return 8;
                case 'f': return 12;
                case 'n': return 10;
                case 'r': return 13;
                case 't': return 9;
                default: return (uint32_t)(unsigned char)x;
            }
        }
        cp = 0;
        for (int k = 2; k < 6; k++) cp = (cp << 4) | (uint32_t)hex_val((char)p[k]);
        *pp += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF && e - *pp >= 6 && (*pp)[0] == '\\' && (*pp)[1] == 'u') {
            uint32_t lo = 0;
            for (int k = 2; k < 6; k++) lo = (lo << 4) | (uint32_t)hex_val((*pp)[k]);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                *pp += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
        }
        return cp;
    }
    if (*p < 0x80) {
        *pp += 1;
        return *p;
    }
    int len = *p >= 0xF0 ? 4 : *p >= 0xE0 ? 3 : 2;
    cp = *p & (len == 4 ? 0x07u : len == 3 ? 0x0Fu : 0x1Fu);
    for (int k = 1; k < len; k++) cp = (cp << 6) | (p[k] & 0x3Fu);
    *pp += len;
    return cp;
}

static size_t put_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tf_json_str_eq(const tf_json *v, const char *s) {
    if (v->type != TF_JSON_STRING) return 0;
    const char *p = v->p + 1, *e = v->p + v->n - 1;
    size_t i = 0, n = strlen(s);
    while (p < e) {
        char buf[4];
        size_t k = put_utf8(next_cp(&p, e), buf);
        if (i + k > n || memcmp(buf, s + i, k) != 0) return 0;
        i += k;
    }
    return i == n;
}

size_t tf_json_str_len(const tf_json *v) {
    if (v->type != TF_JSON_STRING) return 0;
    const char *p = v->p + 1, *e = v->p + v->n - 1;
    size_t n = 0;
    while (p < e) {
        next_cp(&p, e);
        n++;
    }
    return n;
}

size_t tf_json_str_prefix(const tf_json *v, size_t max_cp, char *out, size_t cap) {
    if (v->type != TF_JSON_STRING) return 0;
    const char *p = v->p + 1, *e = v->p + v->n - 1;
    size_t n = 0;
    while (p < e && n < max_cp) {
        next_cp(&p, e);
        n++;
    }
    size_t body = (size_t)(p - (v->p + 1));
    size_t total = body + 2;
    if (out != NULL && total <= cap) {
        out[0] = '"';
        memcpy(out + 1, v->p + 1, body);
        out[body + 1] = '"';
    }
    return total;
}

int tf_json_str_copy(const tf_json *v, char *out, size_t cap) {
    if (v->type != TF_JSON_STRING || cap == 0) return 0;
    const char *p = v->p + 1, *e = v->p + v->n - 1;
    size_t i = 0;
    while (p < e) {
        char buf[4];
        size_t k = put_utf8(next_cp(&p, e), buf);
        if (i + k + 1 > cap) {
            out[i] = '\0';
            return 0;
        }
        memcpy(out + i, buf, k);
        i += k;
    }
    out[i] = '\0';
    return 1;
}

/* ------------------------------------------------------------------------------------- numbers */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

int tf_json_number(const tf_json *v, tf_json_num *out) {
    if (v->type != TF_JSON_NUMBER) return 0;
    const char *p = v->p, *e = v->p + v->n;
    out->is_int = 0;
    out->int_fits = 0;
    out->value_i = 0;
    if (lit(p, e, "NaN")) {
        out->value = NAN;
        return 1;
    }
    if (lit(p, e, "Infinity")) {
        out->value = INFINITY;
        return 1;
    }
    if (lit(p, e, "-Infinity")) {
        out->value = -INFINITY;
        return 1;
    }
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    uint64_t mant = 0;
    int digits = 0;   /* significant digits kept in mant */
    long exp10 = 0;   /* value = mant * 10^exp10 */
    int fits = 1;     /* integer part fits int64 */
    uint64_t ival = 0;
    while (p < e && *p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (ival > (UINT64_C(9223372036854775807) - d) / 10) fits = 0;
        else ival = ival * 10 + d;
        if (digits < 19) {
            if (mant != 0 || d != 0) digits++;
            mant = mant * 10 + d;
        } else {
            exp10++;
        }
        p++;
    }
    int is_int = 1;
    if (p < e && *p == '.') {
        is_int = 0;
        p++;
        while (p < e && *p >= '0' && *p <= '9') {
            if (digits < 19) {
                if (mant != 0 || *p != '0') digits++;
                mant = mant * 10 + (uint64_t)(*p - '0');
                exp10--;
            }
            p++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        int eneg = 0;
        if (*p == '+' || *p == '-') {
            eneg = *p == '-';
            p++;
        }
        long x = 0;
        while (p < e && *p >= '0' && *p <= '9') {
            if (x < 100000) x = x * 10 + (*p - '0');
            p++;
        }
        exp10 += eneg ? -x : x;
    }
    double val;
    if (mant == 0) {
        val = 0.0;
    } else if (mant < (UINT64_C(1) << 53) && exp10 >= 0 && exp10 <= 22) {
        val = (double)mant * POW10[exp10]; /* exact operands: correctly rounded */
    } else if (mant < (UINT64_C(1) << 53) && exp10 < 0 && exp10 >= -22) {
        val = (double)mant / POW10[-exp10];
    } else {
        val = (double)mant;
        long k = exp10;
        while (k > 0 && val < 1e308) {
            long s = k > 22 ? 22 : k;
            val *= POW10[s];
            k -= s;
        }
        if (k > 0) val = INFINITY;
        while (k < 0 && val > 0.0) {
            long s = -k > 22 ? 22 : -k;
            val /= POW10[s];
            k += s;
        }
    }
    out->value = neg ? -val : val;
    if (is_int) {
        out->is_int = 1;
        out->int_fits = fits;
        out->value_i = neg ? -(int64_t)ival : (int64_t)ival;
    }
    return 1;
}
