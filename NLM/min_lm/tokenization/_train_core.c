/* _train_core: the merge loop of BPE training (bpe_trainer.py) in C, against the CPython API only.
 *
 * One function is exported, learn_merges(word_counts, num_merges, progress), the twin of
 * bpe_trainer._learn_merges_python: same input (pre-token -> frequency), same merges, in the same
 * order. The Python stays the reference; tests compare the two exactly.
 *
 * Every word is kept the way the Python keeps its long words (_LongWord): all words' bytes sit in
 * one array of positions, each position holding its token and links to its live neighbours, and
 * each pair keeps a list of the positions where it starts. A merge then visits only the pair's
 * occurrences, whatever the lengths of the words (in C this costs no more than rewriting short
 * words, so there is no second path). Unlike the Python's sets, the position lists are not pruned
 * when a pair moves away: an entry is checked when it is used (the pair must still start there),
 * which is sound because a position's token only ever changes to a newer one, so a pair that has
 * moved away never comes back.
 *
 * Safety: every index is checked against its array's length or comes from a checked one; sizes are
 * checked for overflow before allocating; counts are checked up front to fit in 64 bits. The GIL
 * is released only around the merge loop, which touches no Python object.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GONE (-1)             /* a position whose token was merged into its left neighbour */
#define PROGRESS_EVERY 1024   /* merges between calls of the progress callback */

/* ---------------------------------------------------------------------------------------------- */
/* Growable arrays                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

/* Grow *data (of *cap items of `size` bytes) to hold at least `need` items. 0 on success. */
static int grow(void **data, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need) {
        if (new_cap > SIZE_MAX / 2) return -1;
        new_cap *= 2;
    }
    if (new_cap > SIZE_MAX / size) return -1;
    void *grown = realloc(*data, new_cap * size);
    if (grown == NULL) return -1;
    *data = grown;
    *cap = new_cap;
    return 0;
}

typedef struct {
    int32_t *items;
    size_t len, cap;
} PositionList;

static int positions_append(PositionList *list, int32_t position) {
    if (grow((void **)&list->items, &list->cap, list->len + 1, sizeof(int32_t))) return -1;
    list->items[list->len++] = position;
    return 0;
}

static void positions_free(PositionList *list) {
    free(list->items);
    list->items = NULL;
    list->len = list->cap = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The trainer's state                                                                              */
/* ---------------------------------------------------------------------------------------------- */

typedef struct {
    int32_t a, b;
    int64_t count;        /* Python: pair_counts[a, b] */
    PositionList where;   /* Python: _LongWord.positions[a, b] (here possibly with stale entries) */
    int32_t made_in;      /* the last merge whose new pairs include this one (dedups `made`) */
} Pair;

typedef struct {
    int64_t count;
    int32_t pair;
} HeapEntry;

/* The bytes of a token are token_bytes[start : start + len]. */
typedef struct {
    size_t start, len;
} Token;

/* One byte of a word. Python twin: one index i of a _LongWord (tokens[i], next[i], prev[i]). */
typedef struct {
    int32_t token;      /* GONE once merged into its left neighbour */
    int32_t next, prev; /* the neighbouring positions still in use, -1 at the word's ends */
    int32_t word;       /* index into `freq` */
} Position;

typedef struct {
    unsigned char *token_bytes;
    size_t token_bytes_len, token_bytes_cap;
    Token *tokens;
    size_t num_tokens, tokens_cap;

    /* every byte of every word of two or more bytes, word after word */
    Position *at;
    size_t num_positions, positions_cap;
    int64_t *freq; /* per word */
    size_t num_words, words_cap;

    /* pairs and the hash table (a, b) -> index in `pairs` (open addressing, -1 = empty) */
    Pair *pairs;
    size_t num_pairs, pairs_cap;
    int32_t *table;
    size_t table_size; /* a power of two, kept at least twice num_pairs */

    /* the max-heap of (count, pair), possibly with out-of-date entries (Python: `heap`) */
    HeapEntry *heap;
    size_t heap_len, heap_cap;

    /* pairs made by the current merge (Python: `new_pairs` / `made`) */
    int32_t *made;
    size_t made_len, made_cap;
} Trainer;

static void trainer_free(Trainer *t) {
    free(t->token_bytes);
    free(t->tokens);
    free(t->at);
    free(t->freq);
    for (size_t p = 0; p < t->num_pairs; p++) positions_free(&t->pairs[p].where);
    free(t->pairs);
    free(t->table);
    free(t->heap);
    free(t->made);
}

/* ---------------------------------------------------------------------------------------------- */
/* Tokens and their order                                                                           */
/* ---------------------------------------------------------------------------------------------- */

/* Append the token made of tokens a and b (Python: tokens.append(tokens[a] + tokens[b])). */
static int add_token(Trainer *t, int32_t a, int32_t b) {
    Token x = t->tokens[a], y = t->tokens[b];
    if (t->token_bytes_len > SIZE_MAX - x.len - y.len) return -1; /* lengths are at most the bytes held */
    if (grow((void **)&t->token_bytes, &t->token_bytes_cap, t->token_bytes_len + x.len + y.len, 1)) return -1;
    if (grow((void **)&t->tokens, &t->tokens_cap, t->num_tokens + 1, sizeof(Token))) return -1;
    Token made = {t->token_bytes_len, x.len + y.len};
    memcpy(t->token_bytes + made.start, t->token_bytes + x.start, x.len);
    memcpy(t->token_bytes + made.start + x.len, t->token_bytes + y.start, y.len);
    t->token_bytes_len += made.len;
    t->tokens[t->num_tokens++] = made;
    return 0;
}

/* Compare tokens x and y as byte strings: <0, 0, >0 (a prefix is the smaller). */
static int compare_tokens(const Trainer *t, int32_t x, int32_t y) {
    Token p = t->tokens[x], q = t->tokens[y];
    int c = memcmp(t->token_bytes + p.start, t->token_bytes + q.start, p.len < q.len ? p.len : q.len);
    if (c) return c;
    return (p.len > q.len) - (p.len < q.len);
}

/* Does heap entry x come out before y? Python twin: the heap key (-count, rev(a), rev(b)) of
 * bpe_trainer (`_descending_key`): the higher count first, then the greater pair of byte strings. */
static int comes_first(const Trainer *t, HeapEntry x, HeapEntry y) {
    if (x.count != y.count) return x.count > y.count;
    const Pair *p = &t->pairs[x.pair], *q = &t->pairs[y.pair];
    int c = compare_tokens(t, p->a, q->a);
    if (c == 0) c = compare_tokens(t, p->b, q->b);
    if (c) return c > 0;
    /* Two merges can make equal bytes ("ab"+"c", "a"+"bc"): then the smaller ids, as in the tuple. */
    return p->a != q->a ? p->a < q->a : p->b < q->b;
}

/* ---------------------------------------------------------------------------------------------- */
/* The heap (Python: heapq on `heap`)                                                               */
/* ---------------------------------------------------------------------------------------------- */

static int heap_push(Trainer *t, int32_t pair) {
    if (grow((void **)&t->heap, &t->heap_cap, t->heap_len + 1, sizeof(HeapEntry))) return -1;
    HeapEntry entry = {t->pairs[pair].count, pair};
    size_t i = t->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!comes_first(t, entry, t->heap[parent])) break;
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = entry;
    return 0;
}

static HeapEntry heap_pop(Trainer *t) {
    HeapEntry top = t->heap[0];
    HeapEntry last = t->heap[--t->heap_len];
    size_t i = 0, n = t->heap_len;
    while (2 * i + 1 < n) {
        size_t child = 2 * i + 1;
        if (child + 1 < n && comes_first(t, t->heap[child + 1], t->heap[child])) child++;
        if (!comes_first(t, t->heap[child], last)) break;
        t->heap[i] = t->heap[child];
        i = child;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------------------------------------------- */
/* Pairs (Python: the dicts pair_counts and positions, keyed by (a, b))                             */
/* ---------------------------------------------------------------------------------------------- */

static size_t slot_of(const Trainer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    key *= 0x9E3779B97F4A7C15ull;
    return (size_t)(key ^ (key >> 29)) & (t->table_size - 1);
}

/* The index of pair (a, b), or -1 if it was never seen. */
static int32_t find_pair(const Trainer *t, int32_t a, int32_t b) {
    for (size_t s = slot_of(t, a, b);; s = (s + 1) & (t->table_size - 1)) {
        int32_t p = t->table[s];
        if (p < 0 || (t->pairs[p].a == a && t->pairs[p].b == b)) return p;
    }
}

static int rehash(Trainer *t, size_t size) {
    int32_t *table = malloc(size * sizeof(int32_t));
    if (table == NULL) return -1;
    memset(table, 0xff, size * sizeof(int32_t)); /* all -1 */
    free(t->table);
    t->table = table;
    t->table_size = size;
    for (size_t p = 0; p < t->num_pairs; p++) {
        size_t s = slot_of(t, t->pairs[p].a, t->pairs[p].b);
        while (table[s] >= 0) s = (s + 1) & (size - 1);
        table[s] = (int32_t)p;
    }
    return 0;
}

/* The index of pair (a, b), added with count 0 if new (Python: defaultdict). -1 if out of memory. */
static int32_t get_pair(Trainer *t, int32_t a, int32_t b) {
    int32_t p = find_pair(t, a, b);
    if (p >= 0) return p;
    if (t->num_pairs >= INT32_MAX - 1) return -1;
    if (2 * (t->num_pairs + 1) > t->table_size) {
        if (t->table_size > SIZE_MAX / 4 || rehash(t, 2 * t->table_size)) return -1;
    }
    if (grow((void **)&t->pairs, &t->pairs_cap, t->num_pairs + 1, sizeof(Pair))) return -1;
    p = (int32_t)t->num_pairs++;
    Pair fresh = {a, b, 0, {NULL, 0, 0}, -1};
    t->pairs[p] = fresh;
    size_t s = slot_of(t, a, b);
    while (t->table[s] >= 0) s = (s + 1) & (t->table_size - 1);
    t->table[s] = p;
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* Reading the words and counting pairs                                                             */
/* ---------------------------------------------------------------------------------------------- */

/* Append one word's bytes as positions. Python twin: the loop that builds `words` and `freqs`. */
static int add_word(Trainer *t, const unsigned char *bytes, size_t len, int64_t freq) {
    if (len > (size_t)INT32_MAX - t->num_positions || t->num_words >= INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "_train_core: the words hold more than 2**31 bytes in all");
        return -1;
    }
    if (grow((void **)&t->at, &t->positions_cap, t->num_positions + len, sizeof(Position)) ||
        grow((void **)&t->freq, &t->words_cap, t->num_words + 1, sizeof(int64_t))) {
        PyErr_NoMemory();
        return -1;
    }
    int32_t first = (int32_t)t->num_positions, last = (int32_t)(t->num_positions + len - 1);
    for (int32_t i = first; i <= last; i++) {
        Position byte = {bytes[i - first], i < last ? i + 1 : -1, i > first ? i - 1 : -1, (int32_t)t->num_words};
        t->at[i] = byte;
    }
    t->freq[t->num_words++] = freq;
    t->num_positions += len;
    return 0;
}

/* Fill the trainer from {pre-token: frequency}, keeping words of two or more UTF-8 bytes.
 * Python twin: the first loop of _learn_merges_python. Also checks that no count can overflow. */
static int read_words(Trainer *t, PyObject *word_counts) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int64_t total = 0; /* sum of freq * (len - 1): a bound on every pair's count */
    while (PyDict_Next(word_counts, &pos, &key, &value)) {
        if (!PyUnicode_Check(key) || !PyLong_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "word_counts must map str to int");
            return -1;
        }
        long long freq = PyLong_AsLongLong(value);
        if (freq == -1 && PyErr_Occurred()) return -1;
        if (freq < 1) {
            PyErr_Format(PyExc_ValueError, "word_counts: frequencies must be positive, got %lld", freq);
            return -1;
        }
        PyObject *encoded = PyUnicode_AsUTF8String(key);
        if (encoded == NULL) return -1;
        size_t len = (size_t)PyBytes_GET_SIZE(encoded);
        int64_t weight;
        int status = 0;
        if (len > 1) {
            if (__builtin_mul_overflow((int64_t)freq, (int64_t)(len - 1), &weight) ||
                __builtin_add_overflow(total, weight, &total)) {
                PyErr_SetString(PyExc_OverflowError, "_train_core: pair counts would not fit in 64 bits");
                status = -1;
            } else {
                status = add_word(t, (const unsigned char *)PyBytes_AS_STRING(encoded), len, freq);
            }
        }
        Py_DECREF(encoded);
        if (status) return -1;
    }
    return 0;
}

/* Count every adjacent pair and index where it starts. Python twin: the `pairwise` loop. */
static int count_pairs(Trainer *t) {
    for (size_t i = 0; i < t->num_positions; i++) {
        Position here = t->at[i];
        if (here.next < 0) continue;
        int32_t p = get_pair(t, here.token, t->at[here.next].token);
        if (p < 0 || positions_append(&t->pairs[p].where, (int32_t)i)) return -1;
        t->pairs[p].count += t->freq[here.word];
    }
    for (size_t p = 0; p < t->num_pairs; p++) {
        if (heap_push(t, (int32_t)p)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* One merge                                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/* An occurrence of pair (x, y) becomes one of pair (u, v) at position j, in a word of frequency
 * `freq`; (u, v) is noted as made by this merge. Python twin: _LongWord._move, except that the old
 * position stays in (x, y)'s list, to be skipped when used. That list is freed once the count reaches
 * 0, unless the pair holds the token being made (`new`): a pair of older tokens never forms again,
 * but one with `new` can, later in this merge. */
static int move(Trainer *t, int32_t x, int32_t y, int32_t u, int32_t v, int32_t j, int64_t freq, int32_t new,
                int32_t merge) {
    int32_t p = find_pair(t, x, y); /* always found: every pair in a word was counted */
    if (p >= 0) {
        t->pairs[p].count -= freq;
        if (t->pairs[p].count == 0 && x != new && y != new) positions_free(&t->pairs[p].where);
    }
    int32_t q = get_pair(t, u, v);
    if (q < 0 || positions_append(&t->pairs[q].where, j)) return -1;
    t->pairs[q].count += freq;
    if (t->pairs[q].made_in != merge) {
        t->pairs[q].made_in = merge;
        if (grow((void **)&t->made, &t->made_cap, t->made_len + 1, sizeof(int32_t))) return -1;
        t->made[t->made_len++] = q;
    }
    return 0;
}

static int compare_positions(const void *x, const void *y) {
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* Replace every occurrence of pair `p` = (a, b) by token `new`, left to right within a word.
 * Python twin: _LongWord.merge (and _merge_in_words, which calls it). */
static int merge_pair(Trainer *t, int32_t p, int32_t new, int32_t merge) {
    int32_t a = t->pairs[p].a, b = t->pairs[p].b;
    PositionList found = t->pairs[p].where; /* taken: (a, b) is gone after this merge */
    t->pairs[p].where.items = NULL;
    t->pairs[p].where.len = t->pairs[p].where.cap = 0;
    /* Occurrences overlap only when a == b ("a a a" gives "new a"): then go left to right. */
    if (a == b && found.len > 1) qsort(found.items, found.len, sizeof(int32_t), compare_positions);
    int status = 0;
    for (size_t n = 0; n < found.len && status == 0; n++) {
        int32_t i = found.items[n];
        int32_t j = t->at[i].next;
        if (t->at[i].token != a || j < 0 || t->at[j].token != b) continue; /* stale, or just taken */
        int64_t freq = t->freq[t->at[i].word];
        int32_t left = t->at[i].prev, k = t->at[j].next;
        if (left >= 0) { /* (x, a) at `left` becomes (x, new) */
            int32_t x = t->at[left].token;
            status = move(t, x, a, x, new, left, freq, new, merge);
        }
        if (k >= 0 && status == 0) { /* (b, y) at j becomes (new, y) at i */
            int32_t y = t->at[k].token;
            status = move(t, b, y, new, y, i, freq, new, merge);
            t->at[k].prev = i;
        }
        t->at[i].token = new;
        t->at[j].token = GONE;
        t->at[i].next = k;
    }
    positions_free(&found);
    t->pairs[p].count = 0; /* Python: pair_counts.pop((a, b)) */
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* The merge loop                                                                                   */
/* ---------------------------------------------------------------------------------------------- */

/* Run merges until `target` merges are recorded in `merges` (pairs of ids) or the pairs run out.
 * Python twin: the `while` loop of _learn_merges_python. Touches no Python object: runs without
 * the GIL. Returns 0, or -1 when out of memory. */
static int run_merges(Trainer *t, int32_t *merges, size_t *num_merges, size_t target) {
    while (*num_merges < target && t->heap_len) {
        HeapEntry top = heap_pop(t);
        int64_t count = t->pairs[top.pair].count;
        if (count != top.count) { /* out of date: counts only fall, so re-file it with its true count */
            if (count > 0 && heap_push(t, top.pair)) return -1;
            continue;
        }
        int32_t a = t->pairs[top.pair].a, b = t->pairs[top.pair].b;
        int32_t new = (int32_t)t->num_tokens;
        if (add_token(t, a, b)) return -1;
        merges[2 * *num_merges] = a;
        merges[2 * *num_merges + 1] = b;
        int32_t merge = (int32_t)(*num_merges)++;
        t->made_len = 0;
        if (merge_pair(t, top.pair, new, merge)) return -1;
        for (size_t n = 0; n < t->made_len; n++) {
            if (t->pairs[t->made[n]].count > 0 && heap_push(t, t->made[n])) return -1;
        }
    }
    return 0;
}

/* The 256 single bytes are tokens 0..255 (Python: tokens = [bytes([i]) for i in range(256)]). */
static int init_tokens(Trainer *t) {
    if (grow((void **)&t->token_bytes, &t->token_bytes_cap, 256, 1) ||
        grow((void **)&t->tokens, &t->tokens_cap, 256, sizeof(Token)))
        return -1;
    for (size_t i = 0; i < 256; i++) {
        t->token_bytes[i] = (unsigned char)i;
        Token byte = {i, 1};
        t->tokens[i] = byte;
    }
    t->token_bytes_len = t->num_tokens = 256;
    return 0;
}

/* learn_merges(word_counts, num_merges, progress) -> list of (a, b) token ids.
 * Python twin: bpe_trainer._learn_merges_python (which also returns the tokens' bytes; the caller
 * rebuilds those from the merges). `progress` is None or called with the number of new merges. */
static PyObject *learn_merges(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *word_counts, *progress;
    Py_ssize_t requested;
    if (!PyArg_ParseTuple(args, "O!nO:learn_merges", &PyDict_Type, &word_counts, &requested, &progress))
        return NULL;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be None or callable");
        return NULL;
    }
    Trainer t;
    memset(&t, 0, sizeof t);
    int32_t *merges = NULL;
    PyObject *result = NULL;
    if (init_tokens(&t) || rehash(&t, 1024)) {
        PyErr_NoMemory();
        goto done;
    }
    if (read_words(&t, word_counts)) goto done;
    if (count_pairs(&t)) {
        PyErr_NoMemory();
        goto done;
    }
    size_t target = requested > 0 ? (size_t)requested : 0;
    if (target > t.num_positions) target = t.num_positions; /* more merges than positions cannot happen */
    merges = malloc((2 * target + 2) * sizeof(int32_t));
    if (merges == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t done_merges = 0, reported = 0;
    while (done_merges < target && t.heap_len) {
        size_t stop = done_merges + PROGRESS_EVERY < target ? done_merges + PROGRESS_EVERY : target;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = run_merges(&t, merges, &done_merges, stop);
        Py_END_ALLOW_THREADS
        if (status) {
            PyErr_NoMemory();
            goto done;
        }
        if (progress != Py_None) {
            PyObject *r = PyObject_CallFunction(progress, "n", (Py_ssize_t)(done_merges - reported));
            if (r == NULL) goto done;
            Py_DECREF(r);
            reported = done_merges;
        }
    }
    result = PyList_New((Py_ssize_t)done_merges);
    if (result == NULL) goto done;
    for (size_t m = 0; m < done_merges; m++) {
        PyObject *pair = Py_BuildValue("(ii)", merges[2 * m], merges[2 * m + 1]);
        if (pair == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)m, pair);
    }
done:
    free(merges);
    trainer_free(&t);
    return result;
}

static PyMethodDef methods[] = {
    {"learn_merges", learn_merges, METH_VARARGS,
     "learn_merges(word_counts, num_merges, progress) -> list of (a, b) token ids.\n\n"
     "The compiled twin of bpe_trainer._learn_merges_python: the same merges, faster."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_train_core",
    .m_doc = "The merge loop of BPE training in C (see bpe_trainer.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__train_core(void) { return PyModule_Create(&module); }
