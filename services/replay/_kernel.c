/* The replay's per-batch hot path, compiled (services/replay/kernel.py is its Python face).

   For each row of a batch (subject, scopes, since, sealed entry) it does what the pure-Python
   path does (BatchSender.raw_values_python + encode.ReplayBuilder.build): open the sealed
   entry (AES-256-GCM through OpenSSL's EVP API: no cryptography of its own), compute the
   command id (UUIDv5: SHA-1 through EVP) and write the command's Avro bytes, for the subject
   kinds of the fixed shape (cust, email_sha256, phone_sha256). It returns one item per row:
   (command id, bytes), None (the destination cannot act on the subject) or False (not handled
   here: a postal address, a device, anything unusual; the caller builds it in Python). It
   returns None for the whole batch when a sealed entry cannot be opened here (malformed,
   unknown key, forged, not UTF-8): the caller then runs the Python path, which raises the
   precise error. tests/unit/test_replay_kernel.py proves the output byte-identical to the
   Python path. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define NONCE_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 32
#define MAX_KIDS 16

typedef struct {
    const char *data;
    Py_ssize_t len;
} span;

typedef struct {
    char *buf;
    size_t len, cap;
} out_buf;

static int ob_reserve(out_buf *o, size_t more) {
    if (o->len + more <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + more) cap *= 2;
    char *b = PyMem_Realloc(o->buf, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static int ob_put(out_buf *o, const void *data, size_t n) {
    if (ob_reserve(o, n) < 0) return -1;
    memcpy(o->buf + o->len, data, n);
    o->len += n;
    return 0;
}

/* Avro long: zigzag, then base-128 varint, low group first (encode.write_long). */
static int ob_long(out_buf *o, long long value) {
    uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    unsigned char tmp[10];
    int k = 0;
    while (n & ~(uint64_t)0x7F) {
        tmp[k++] = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    tmp[k++] = (unsigned char)n;
    return ob_put(o, tmp, (size_t)k);
}

/* Avro string (encode.write_string) of UTF-8 bytes. */
static int ob_string(out_buf *o, const char *data, Py_ssize_t n) {
    if (ob_long(o, (long long)n) < 0) return -1;
    return ob_put(o, data, (size_t)n);
}

/* An optional string: union branch 1 (0x02) then the string, or branch 0 (null). */
static int ob_optional(out_buf *o, const char *data, Py_ssize_t n, int present) {
    if (!present) return ob_put(o, "\x00", 1);
    if (ob_put(o, "\x02", 1) < 0) return -1;
    return ob_string(o, data, n);
}

static signed char B64[256];

static void init_b64(void) {
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    memset(B64, -1, sizeof B64);
    for (int i = 0; i < 64; i++) B64[(unsigned char)alphabet[i]] = (signed char)i;
}

/* base64url without padding, the alphabet only (sealing._B64), as binascii.a2b_base64 decodes
   it once padded (excess bits of the last character ignored); -1: not decodable here. */
static Py_ssize_t b64url_decode(const char *in, Py_ssize_t n, unsigned char *out) {
    if (n == 0 || n % 4 == 1) return -1;
    Py_ssize_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        signed char v = B64[(unsigned char)in[i]];
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (unsigned char)((acc >> bits) & 0xFF);
        }
    }
    return k;
}

static const char HEX[] = "0123456789abcdef";

typedef struct {
    span kid;
    EVP_CIPHER_CTX *ctx;
} key_entry;

/* kind flags (per subject kind of the fixed shape) */
#define HAS_HASH 1   /* the destination takes the hash */
#define HAS_RAW 2    /* the destination takes the raw value (sealed entries are read for it) */
#define NEEDS_HASH 4 /* the hash satisfies requires_one_of */
#define NEEDS_RAW 8  /* the raw value satisfies requires_one_of */

/* Decrypt one sealed entry ``KID.BODY`` bound to ``ctx_prefix`` + ``sha256`` + "/" + KID into
   *plain; 1: opened (valid UTF-8), 0: not opened here (the caller's Python path decides), -1:
   a Python error. */
static int open_sealed(PyObject *sealed_obj, const char *ctx_prefix, Py_ssize_t ctx_prefix_n,
                       const char *sha256, Py_ssize_t sha256_n, key_entry *kids, int nkids,
                       out_buf *scratch, out_buf *aad, out_buf *plain) {
    Py_ssize_t vn;
    const char *v = PyUnicode_AsUTF8AndSize(sealed_obj, &vn);
    if (!v) return -1;
    const char *dot = memchr(v, '.', (size_t)vn);
    if (!dot) return 0;
    Py_ssize_t kid_n = dot - v;
    const char *body = dot + 1;
    Py_ssize_t body_n = vn - kid_n - 1;
    if (memchr(body, '.', (size_t)body_n)) return 0;
    EVP_CIPHER_CTX *ctx = NULL;
    for (int k = 0; k < nkids; k++) {
        if (kids[k].kid.len == kid_n && memcmp(kids[k].kid.data, v, (size_t)kid_n) == 0) {
            ctx = kids[k].ctx;
            break;
        }
    }
    if (!ctx) return 0;
    scratch->len = 0;
    if (ob_reserve(scratch, (size_t)body_n) < 0) return -1;
    Py_ssize_t raw_n = b64url_decode(body, body_n, (unsigned char *)scratch->buf);
    if (raw_n < NONCE_BYTES + TAG_BYTES) return 0;
    const unsigned char *raw = (const unsigned char *)scratch->buf;
    aad->len = 0;
    if (ob_put(aad, ctx_prefix, (size_t)ctx_prefix_n) < 0 || ob_put(aad, sha256, (size_t)sha256_n) < 0 ||
        ob_put(aad, "/", 1) < 0 || ob_put(aad, v, (size_t)kid_n) < 0)
        return -1;
    int ct_n = (int)(raw_n - NONCE_BYTES - TAG_BYTES);
    plain->len = 0;
    if (ob_reserve(plain, (size_t)ct_n + 16) < 0) return -1;
    int n = 0, fin = 0;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, raw) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)aad->buf, (int)aad->len) != 1 ||
        EVP_DecryptUpdate(ctx, (unsigned char *)plain->buf, &n, raw + NONCE_BYTES, ct_n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, (void *)(raw + raw_n - TAG_BYTES)) != 1 ||
        EVP_DecryptFinal_ex(ctx, (unsigned char *)plain->buf + n, &fin) != 1)
        return 0;
    plain->len = (size_t)(n + fin);
    PyObject *text = PyUnicode_DecodeUTF8(plain->buf, (Py_ssize_t)plain->len, "strict");
    if (!text) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(text);
    return 1;
}

static PyObject *build_batch(PyObject *self, PyObject *args) {
    PyObject *rows, *keys, *scopes_cache, *scopes_fn;
    const char *email_ctx, *phone_ctx, *head, *fixed, *times, *id_prefix;
    Py_ssize_t email_ctx_n, phone_ctx_n, head_n, fixed_n, times_n, id_prefix_n;
    int customer_flags, email_flags, phone_flags;
    if (!PyArg_ParseTuple(args, "O!O!y#y#O!Oy#y#y#y#iii", &PyList_Type, &rows, &PyDict_Type, &keys,
                          &email_ctx, &email_ctx_n, &phone_ctx, &phone_ctx_n, &PyDict_Type,
                          &scopes_cache, &scopes_fn, &head, &head_n, &fixed, &fixed_n, &times,
                          &times_n, &id_prefix, &id_prefix_n, &customer_flags, &email_flags,
                          &phone_flags))
        return NULL;

    PyObject *result = NULL, *out = NULL;
    key_entry kids[MAX_KIDS];
    int nkids = 0;
    EVP_MD *sha1 = NULL;
    EVP_MD_CTX *md = NULL, *md_base = NULL;
    out_buf o = {0}, aad = {0}, scratch = {0}, plain = {0};

    PyObject *kid_obj, *key_obj;
    Py_ssize_t pos = 0;
    while (PyDict_Next(keys, &pos, &kid_obj, &key_obj)) {
        if (nkids >= MAX_KIDS || !PyUnicode_Check(kid_obj) || !PyBytes_Check(key_obj) ||
            PyBytes_GET_SIZE(key_obj) != KEY_BYTES) {
            PyErr_SetString(PyExc_ValueError, "keys: at most 16 {str: 32 bytes}");
            goto done;
        }
        Py_ssize_t kn;
        const char *kd = PyUnicode_AsUTF8AndSize(kid_obj, &kn);
        if (!kd) goto done;
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
        if (!ctx) {
            PyErr_NoMemory();
            goto done;
        }
        kids[nkids].kid.data = kd;
        kids[nkids].kid.len = kn;
        kids[nkids].ctx = ctx;
        nkids++;
        if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL,
                               (const unsigned char *)PyBytes_AS_STRING(key_obj), NULL) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "EVP_DecryptInit_ex failed");
            goto done;
        }
    }

    sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    md = EVP_MD_CTX_new();
    md_base = EVP_MD_CTX_new();
    if (!sha1 || !md || !md_base || EVP_DigestInit_ex(md_base, sha1, NULL) != 1 ||
        EVP_DigestUpdate(md_base, id_prefix, (size_t)id_prefix_n) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-1 unavailable");
        goto done;
    }

    Py_ssize_t count = PyList_GET_SIZE(rows);
    out = PyList_New(count);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        PyObject *item;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 4) goto unhandled; /* more: the caller's */
        PyObject *subject_obj = PyTuple_GET_ITEM(row, 0), *scopes = PyTuple_GET_ITEM(row, 1),
                 *since_obj = PyTuple_GET_ITEM(row, 2), *sealed_obj = PyTuple_GET_ITEM(row, 3);
        if (!PyUnicode_Check(subject_obj) || !PyLong_Check(since_obj) || !PyTuple_Check(scopes))
            goto unhandled;
        Py_ssize_t sn;
        const char *subject = PyUnicode_AsUTF8AndSize(subject_obj, &sn);
        if (!subject) goto done;
        const char *colon = memchr(subject, ':', (size_t)sn);
        if (!colon) goto unhandled;
        Py_ssize_t kind_n = colon - subject;
        const char *value = colon + 1;
        Py_ssize_t value_n = sn - kind_n - 1;
        int kind, flags;
        const char *ctx_prefix;
        Py_ssize_t ctx_prefix_n;
        if (kind_n == 4 && memcmp(subject, "cust", 4) == 0) {
            kind = 0;
            flags = customer_flags;
            ctx_prefix = NULL;
            ctx_prefix_n = 0;
        } else if (kind_n == 12 && memcmp(subject, "email_sha256", 12) == 0) {
            kind = 1;
            flags = email_flags;
            ctx_prefix = email_ctx;
            ctx_prefix_n = email_ctx_n;
        } else if (kind_n == 12 && memcmp(subject, "phone_sha256", 12) == 0) {
            kind = 2;
            flags = phone_flags;
            ctx_prefix = phone_ctx;
            ctx_prefix_n = phone_ctx_n;
        } else {
            goto unhandled;
        }
        int overflow = 0;
        long long since = PyLong_AsLongLongAndOverflow(since_obj, &overflow);
        if (overflow) goto unhandled;
        if (since == -1 && PyErr_Occurred()) goto done;

        int has_raw = 0;
        if (sealed_obj != Py_None) {
            if (kind == 0 || !(flags & HAS_RAW) || !PyUnicode_Check(sealed_obj)) goto unhandled;
            int opened = open_sealed(sealed_obj, ctx_prefix, ctx_prefix_n, value, value_n, kids, nkids,
                                     &scratch, &aad, &plain);
            if (opened < 0) goto done;
            if (opened == 0) { /* the Python path raises the reason */
                result = Py_None;
                Py_INCREF(result);
                goto done;
            }
            has_raw = 1;
        }
        int hash_usable = (flags & HAS_HASH) && (flags & NEEDS_HASH);
        if (!(hash_usable || (has_raw && (flags & NEEDS_RAW)))) {
            item = Py_None;
            Py_INCREF(item);
            PyList_SET_ITEM(out, i, item);
            continue;
        }

        /* the command id: UUIDv5 of the prefix (namespace, request id, destination) and the subject */
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int dn = 0;
        if (EVP_MD_CTX_copy_ex(md, md_base) != 1 || EVP_DigestUpdate(md, subject, (size_t)sn) != 1 ||
            EVP_DigestFinal_ex(md, digest, &dn) != 1 || dn < 16) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-1 failed");
            goto done;
        }
        char x[32], cid[36];
        for (int k = 0; k < 16; k++) {
            x[2 * k] = HEX[digest[k] >> 4];
            x[2 * k + 1] = HEX[digest[k] & 15];
        }
        memcpy(cid, x, 8);
        cid[8] = '-';
        memcpy(cid + 9, x + 8, 4);
        cid[13] = '-';
        cid[14] = '5';
        memcpy(cid + 15, x + 13, 3);
        cid[18] = '-';
        cid[19] = "89ab"[(digest[8] >> 4) & 3];
        memcpy(cid + 20, x + 17, 3);
        cid[23] = '-';
        memcpy(cid + 24, x + 20, 12);

        PyObject *scope_bytes = PyDict_GetItemWithError(scopes_cache, scopes); /* borrowed */
        if (scope_bytes) {
            Py_INCREF(scope_bytes);
        } else {
            if (PyErr_Occurred()) goto done;
            scope_bytes = PyObject_CallOneArg(scopes_fn, scopes);
            if (!scope_bytes) goto done;
        }
        if (!PyBytes_Check(scope_bytes)) {
            Py_DECREF(scope_bytes);
            PyErr_SetString(PyExc_TypeError, "scopes: bytes expected");
            goto done;
        }

        o.len = 0;
        int bad = ob_put(&o, head, (size_t)head_n) < 0 || ob_string(&o, cid, 36) < 0 ||
                  ob_put(&o, fixed, (size_t)fixed_n) < 0 ||
                  ob_optional(&o, value, value_n, kind == 0) < 0 ||                          /* customer_id */
                  ob_optional(&o, plain.buf, (Py_ssize_t)plain.len, kind == 1 && has_raw) < 0 || /* email */
                  ob_optional(&o, plain.buf, (Py_ssize_t)plain.len, kind == 2 && has_raw) < 0 || /* phone */
                  ob_put(&o, "\x00", 1) < 0 ||                                                /* postal_address */
                  ob_optional(&o, value, value_n, kind == 1 && (flags & HAS_HASH)) < 0 ||      /* email_sha256 */
                  ob_optional(&o, value, value_n, kind == 2 && (flags & HAS_HASH)) < 0 ||      /* phone_sha256 */
                  ob_put(&o, PyBytes_AS_STRING(scope_bytes), (size_t)PyBytes_GET_SIZE(scope_bytes)) < 0 ||
                  ob_put(&o, times, (size_t)times_n) < 0 || ob_long(&o, since) < 0 ||
                  ob_put(&o, "\x00", 1) < 0; /* device_id */
        Py_DECREF(scope_bytes);
        if (bad) goto done;
        PyObject *key = PyUnicode_FromStringAndSize(cid, 36);
        PyObject *body = key ? PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len) : NULL;
        item = body ? PyTuple_Pack(2, key, body) : NULL;
        Py_XDECREF(key);
        Py_XDECREF(body);
        if (!item) goto done;
        PyList_SET_ITEM(out, i, item);
        continue;

    unhandled:
        item = Py_False;
        Py_INCREF(item);
        PyList_SET_ITEM(out, i, item);
    }
    result = out;
    out = NULL;

done:
    for (int k = 0; k < nkids; k++) EVP_CIPHER_CTX_free(kids[k].ctx);
    EVP_MD_CTX_free(md);
    EVP_MD_CTX_free(md_base);
    EVP_MD_free(sha1);
    PyMem_Free(o.buf);
    PyMem_Free(aad.buf);
    PyMem_Free(scratch.buf);
    PyMem_Free(plain.buf);
    Py_XDECREF(out);
    return result;
}

/* BatchReader.sealed's assignment in C: ``rows[i]`` for each i of ``where`` with its sealed
   entry from ``text`` (``_SEALED``'s lines ``<sha256> <sealed>``; None: none), looked up by
   the subject's part after its first colon (None when absent). */
static PyObject *attach_sealed(PyObject *self, PyObject *args) {
    PyObject *rows, *where, *text_obj;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &rows, &PyList_Type, &where, &text_obj)) return NULL;
    PyObject *found = PyDict_New();
    if (!found) return NULL;
    if (text_obj != Py_None) {
        if (!PyUnicode_Check(text_obj)) {
            PyErr_SetString(PyExc_TypeError, "text: str or None");
            goto error;
        }
        Py_ssize_t tn;
        const char *text = PyUnicode_AsUTF8AndSize(text_obj, &tn);
        if (!text) goto error;
        const char *p = text, *end = text + tn;
        while (tn > 0 && p <= end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *line_end = nl ? nl : end;
            const char *sp = memchr(p, ' ', (size_t)(line_end - p));
            if (!sp) {
                PyErr_SetString(PyExc_ValueError, "a sealed line without a space");
                goto error;
            }
            PyObject *key = PyUnicode_DecodeUTF8(p, sp - p, "strict");
            PyObject *value = key ? PyUnicode_DecodeUTF8(sp + 1, line_end - sp - 1, "strict") : NULL;
            int bad = !value || PyDict_SetItem(found, key, value) < 0;
            Py_XDECREF(key);
            Py_XDECREF(value);
            if (bad) goto error;
            if (!nl) break;
            p = nl + 1;
        }
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(where); k++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(where, k));
        if (i == -1 && PyErr_Occurred()) goto error;
        if (i < 0 || i >= PyList_GET_SIZE(rows)) {
            PyErr_SetString(PyExc_IndexError, "where: not a row");
            goto error;
        }
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 5 || !PyUnicode_Check(PyTuple_GET_ITEM(row, 0))) {
            PyErr_SetString(PyExc_TypeError, "rows: 5-tuples");
            goto error;
        }
        Py_ssize_t sn;
        const char *subject = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(row, 0), &sn);
        if (!subject) goto error;
        const char *colon = memchr(subject, ':', (size_t)sn);
        PyObject *key = colon ? PyUnicode_DecodeUTF8(colon + 1, subject + sn - colon - 1, "strict")
                              : PyUnicode_FromStringAndSize("", 0);
        if (!key) goto error;
        PyObject *sealed = PyDict_GetItemWithError(found, key); /* borrowed */
        Py_DECREF(key);
        if (!sealed) {
            if (PyErr_Occurred()) goto error;
            sealed = Py_None;
        }
        PyObject *new_row = PyTuple_Pack(5, PyTuple_GET_ITEM(row, 0), PyTuple_GET_ITEM(row, 1),
                                         PyTuple_GET_ITEM(row, 2), sealed, PyTuple_GET_ITEM(row, 4));
        if (!new_row || PyList_SetItem(rows, i, new_row) < 0) goto error;
    }
    Py_DECREF(found);
    Py_RETURN_NONE;
error:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef methods[] = {
    {"build_batch", build_batch, METH_VARARGS,
     "build_batch(rows, keys, email_context, phone_context, scopes_cache, scopes, head, fixed, "
     "times, id_prefix, customer_flags, email_flags, phone_flags) -> list | None"},
    {"attach_sealed", attach_sealed, METH_VARARGS, "attach_sealed(rows, where, text) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    init_b64();
    return PyModule_Create(&module);
}
