/* _train_core: the merge loop of BPE training (bpe_trainer.py) in C, against the CPython API only.
 *
 * One function is exported, learn_merges(word_counts, num_merges, progress), the twin of
 * bpe_trainer._learn_merges_python: same input (pre-token -> frequency), same merges, in the same
 * order. The Python stays the reference; tests compare the two exactly.
 *
 * A merge must cost time in proportion to the pair's occurrences, whatever the lengths of the words
 * (one megabyte of DNA is one word), and each occurrence must cost little. Three facts make that so:
 *
 * 1. Every byte of every word is a position holding its token, links to its live neighbours and the
 *    id of the pair that starts there. A merge meets each neighbouring pair it destroys at a known
 *    position, so it updates that pair's count without looking the pair up.
 * 2. Every pair a merge makes holds the new token. Within the merge such a pair is found through the
 *    other token, in two small tables indexed by token id (`made_left`, `made_right`): no hashing.
 * 3. A pair is made in exactly one merge (the one that made its newer token; pairs of two bytes at
 *    the start), and all of its occurrences arise then: afterwards they only go away. So its list of
 *    positions is written once, at the end of that merge, as a slice of one shared array, in the
 *    order of the word (occurrences are visited in that order). An entry whose position no longer
 *    starts the pair is skipped when met; the slices of pairs that are gone are dropped when the
 *    array fills up.
 *
 * Merges visit their occurrences left to right, which is also the order that overlapping
 * occurrences ("a a a" gives "new a") need.
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

#define PROGRESS_EVERY 1024   /* merges between calls of the progress callback */
#define FLOOR 16              /* pairs seen at most this often wait outside the heap, see best_pair */
#define PREFETCH 16           /* how many entries ahead a merge asks for the positions it will visit */

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

/* ---------------------------------------------------------------------------------------------- */
/* The trainer's state                                                                              */
/* ---------------------------------------------------------------------------------------------- */

/* One byte of a word. Python twin: one index i of a _LongWord (tokens[i], next[i], prev[i]). */
typedef struct {
    int32_t token;      /* meaningful while the position is in use */
    int32_t next, prev; /* the neighbouring positions still in use, -1 at the word's ends */
    int32_t pair;       /* the pair (token, next's token) that starts here, -1 if none */
    int32_t word;       /* index into `freq` */
} Position;

typedef struct {
    int32_t a, b;
    size_t start, len; /* its positions: where[start : start + len], some possibly out of date */
} Pair;

/* An occurrence noted during a merge, filed into `where` when the merge ends. */
typedef struct {
    int32_t pair, position;
} Occurrence;

/* Which pair a merge made with a given other token (valid if `merge` is the current merge). */
typedef struct {
    int32_t merge, pair;
} Made;

/* `lead`: the first four bytes of the pair's first token, big-endian, zero-padded. Most entries tied
 * on the count differ there, which settles their order without reading the tokens. */
typedef struct {
    int64_t count;
    int32_t pair;
    uint32_t lead;
} HeapEntry;

/* The bytes of a token are token_bytes[start : start + len]. */
typedef struct {
    size_t start, len;
} Token;

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

    /* pairs, their counts (Python: pair_counts; kept apart, as a merge touches only the counts of
     * the pairs it destroys) and the slices of their positions */
    Pair *pairs;
    size_t num_pairs, pairs_cap;
    int64_t *count;
    size_t count_cap;
    int32_t *where;
    size_t where_len, where_cap;

    /* the current merge: the pairs it made (Python: `new_pairs`), found by their other token, and
     * their occurrences in the order met */
    int32_t *made;
    size_t made_len, made_cap;
    Made *made_left, *made_right; /* (x, new) by x and (new, y) by y; one per possible token */
    Occurrence *fresh;
    size_t fresh_len, fresh_cap;

    /* the max-heap of (count, pair), possibly with out-of-date entries (Python: `heap`), holding
     * every pair counted more than `floor` times; the pairs counted fewer are parked aside */
    HeapEntry *heap;
    size_t heap_len, heap_cap;
    int64_t floor;
    int32_t *parked;
    size_t parked_len, parked_cap;
} Trainer;

static void trainer_free(Trainer *t) {
    free(t->token_bytes);
    free(t->tokens);
    free(t->at);
    free(t->freq);
    free(t->pairs);
    free(t->count);
    free(t->where);
    free(t->made);
    free(t->made_left);
    free(t->made_right);
    free(t->fresh);
    free(t->heap);
    free(t->parked);
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
    /* Leads differ only at a byte that both tokens hold, or where one has ended (padding 0, the
     * smaller, as a prefix is): either way as the tokens differ. */
    if (x.lead != y.lead) return x.lead > y.lead;
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
    Token a = t->tokens[t->pairs[pair].a];
    uint32_t lead = 0;
    for (size_t n = 0; n < 4; n++) lead = lead << 8 | (n < a.len ? t->token_bytes[a.start + n] : 0);
    HeapEntry entry = {t->count[pair], pair, lead};
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

/* Put pair p where it belongs by its count: the heap, the parked pairs, or nowhere if it is gone. */
static int file_pair(Trainer *t, int32_t p) {
    if (t->count[p] > t->floor) return heap_push(t, p);
    if (t->count[p] == 0) return 0;
    if (grow((void **)&t->parked, &t->parked_cap, t->parked_len + 1, sizeof(int32_t))) return -1;
    t->parked[t->parked_len++] = p;
    return 0;
}

/* The pair to merge next (Python: the top of the heap once it is up to date), -1 when no pair is
 * left, -2 if out of memory. Most pairs of a large corpus are seen a few times and are never merged:
 * parking them keeps the heap small, and they come back, with a lower floor, only when every pair
 * above the floor is gone. (A heap entry's count is at least the pair's: counts only fall once the
 * merge that made a pair has ended and filed it.) */
static int32_t best_pair(Trainer *t) {
    for (;;) {
        if (t->heap_len == 0 || t->heap[0].count <= t->floor) {
            if (t->floor == 0) return -1; /* then nothing is parked, and the heap is empty */
            t->floor /= 2;
            size_t kept = 0;
            for (size_t n = 0; n < t->parked_len; n++) {
                int32_t p = t->parked[n];
                if (t->count[p] > t->floor) {
                    if (heap_push(t, p)) return -2;
                } else if (t->count[p] > 0) {
                    t->parked[kept++] = p;
                }
            }
            t->parked_len = kept;
            continue;
        }
        HeapEntry top = heap_pop(t);
        if (t->count[top.pair] == top.count) return top.pair;
        if (file_pair(t, top.pair)) return -2; /* out of date: re-file it with its true count */
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Pairs and their positions                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/* Make room for `pairs` new pairs and `moves` noted occurrences, so that what follows cannot fail. */
static int reserve(Trainer *t, size_t pairs, size_t moves) {
    if (t->num_pairs + pairs > INT32_MAX) return -1;
    return grow((void **)&t->pairs, &t->pairs_cap, t->num_pairs + pairs, sizeof(Pair)) ||
           grow((void **)&t->count, &t->count_cap, t->num_pairs + pairs, sizeof(int64_t)) ||
           grow((void **)&t->made, &t->made_cap, t->made_len + pairs, sizeof(int32_t)) ||
           grow((void **)&t->fresh, &t->fresh_cap, t->fresh_len + moves, sizeof(Occurrence));
}

/* A new pair (a, b) with count 0, noted as made by the current merge (room reserved). */
static int32_t new_pair(Trainer *t, int32_t a, int32_t b) {
    int32_t p = (int32_t)t->num_pairs++;
    Pair fresh = {a, b, 0, 0};
    t->pairs[p] = fresh;
    t->count[p] = 0;
    t->made[t->made_len++] = p;
    return p;
}

/* The pair (u, v) of this merge, where u or v is the new token: found by the other token, or made.
 * Python twin: the defaultdict entry pair_counts[u, v]. */
static int32_t made_pair(Trainer *t, int32_t u, int32_t v, int32_t new, int32_t merge) {
    Made *slot = v == new ? &t->made_left[u] : &t->made_right[v];
    if (slot->merge != merge) {
        slot->merge = merge;
        slot->pair = new_pair(t, u, v);
    }
    return slot->pair;
}

/* From now on the pair at `position` is `pair`, in a word of frequency `freq`: the old pair's count
 * falls, the new one's rises, and the occurrence is noted (room reserved). Python twin:
 * _LongWord._move. */
static void move(Trainer *t, int32_t position, int32_t pair, int64_t freq) {
    int32_t old = t->at[position].pair;
    if (old >= 0) t->count[old] -= freq;
    t->at[position].pair = pair;
    t->count[pair] += freq;
    Occurrence seen = {pair, position};
    t->fresh[t->fresh_len++] = seen;
}

/* Drop the slices of the pairs that are gone (count 0: merged, or never to come back, see the top).
 * Slices lie in the order of pair ids, as they were filed, so the rest move down in place. The
 * out-of-date entries of live slices stay: finding them would cost a visit to each position. */
static void compact(Trainer *t) {
    size_t to = 0;
    for (size_t p = 0; p < t->num_pairs; p++) {
        Pair *pair = &t->pairs[p];
        if (t->count[p] == 0) pair->len = 0;
        if (pair->len) memmove(t->where + to, t->where + pair->start, pair->len * sizeof(int32_t));
        pair->start = to;
        to += pair->len;
    }
    t->where_len = to;
}

/* File the occurrences noted during this merge as the slices of the pairs it made (a counting sort
 * by pair, which keeps each slice in the order of the word). Pairs whose count fell back to 0 are
 * skipped: they are gone. 0, or -1 if out of memory. */
static int file_fresh(Trainer *t) {
    size_t need = t->where_len + t->fresh_len;
    if (need > t->where_cap) { /* full: compact (before the new slices are counted), keeping half free */
        compact(t);
        need = 2 * (t->where_len + t->fresh_len);
    }
    if (grow((void **)&t->where, &t->where_cap, need, sizeof(int32_t))) return -1;
    for (size_t n = 0; n < t->fresh_len; n++) {
        int32_t p = t->fresh[n].pair;
        if (t->count[p] > 0) t->pairs[p].len++;
    }
    for (size_t n = 0; n < t->made_len; n++) {
        Pair *pair = &t->pairs[t->made[n]];
        pair->start = t->where_len;
        t->where_len += pair->len;
        pair->len = 0;
    }
    for (size_t n = 0; n < t->fresh_len; n++) {
        Occurrence seen = t->fresh[n];
        if (t->count[seen.pair] > 0) {
            Pair *pair = &t->pairs[seen.pair];
            t->where[pair->start + pair->len++] = seen.position;
        }
    }
    t->fresh_len = t->made_len = 0;
    return 0;
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
        Position byte = {bytes[i - first], i < last ? i + 1 : -1, i > first ? i - 1 : -1, -1,
                         (int32_t)t->num_words};
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

/* Count every adjacent pair of bytes and file where it starts. Python twin: the `pairwise` loop. */
static int count_pairs(Trainer *t) {
    int32_t *byte_pairs = malloc(256 * 256 * sizeof(int32_t)); /* (a, b) -> pair id, -1 if unseen */
    if (byte_pairs == NULL) return -1;
    memset(byte_pairs, 0xff, 256 * 256 * sizeof(int32_t));
    if (reserve(t, 256 * 256, t->num_positions)) {
        free(byte_pairs);
        return -1;
    }
    for (size_t i = 0; i < t->num_positions; i++) {
        Position here = t->at[i];
        if (here.next < 0) continue;
        int32_t *id = &byte_pairs[here.token << 8 | t->at[here.next].token];
        if (*id < 0) *id = new_pair(t, here.token, t->at[here.next].token);
        move(t, (int32_t)i, *id, t->freq[here.word]);
    }
    free(byte_pairs);
    if (file_fresh(t)) return -1;
    t->floor = FLOOR;
    for (size_t p = 0; p < t->num_pairs; p++) {
        if (file_pair(t, (int32_t)p)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* One merge                                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/* Replace every occurrence of pair `p` = (a, b) by token `new`, left to right. In `x a b y` the
 * pairs (x, a) and (b, y) give way to (x, new) and (new, y). Python twin: _LongWord.merge (and
 * _merge_in_words, which calls it). */
static int merge_pair(Trainer *t, int32_t p, int32_t new, int32_t merge) {
    const Pair found = t->pairs[p];
    /* Each occurrence moves two pairs, to pairs of `new` with one of the tokens there can be. */
    size_t most = 2 * t->num_tokens < 2 * found.len ? 2 * t->num_tokens : 2 * found.len;
    if (reserve(t, most, 2 * found.len)) return -1;
    for (size_t n = 0; n < found.len; n++) {
        /* The occurrences lie all over a long word, each a cache miss. Asked for ahead, the misses
         * overlap instead of following each other: the position PREFETCH entries on, and the
         * neighbours of the one half-way there (its line has come by now). */
        if (n + PREFETCH < found.len) __builtin_prefetch(&t->at[t->where[found.start + n + PREFETCH]]);
        if (n + PREFETCH / 2 < found.len) {
            const Position *ahead = &t->at[t->where[found.start + n + PREFETCH / 2]];
            if (ahead->pair == p) { /* not out of date: it has neighbours */
                __builtin_prefetch(&t->at[ahead->next]);
                if ((size_t)ahead->next + 3 < t->num_positions) /* where the token after next often is */
                    __builtin_prefetch(&t->at[ahead->next + 3]);
                if (ahead->prev >= 0) __builtin_prefetch(&t->at[ahead->prev]);
            }
        }
        int32_t i = t->where[found.start + n];
        if (t->at[i].pair != p) continue; /* moved away, or taken by the occurrence just merged */
        Position *here = &t->at[i];
        int32_t left = here->prev, j = here->next, k = t->at[j].next;
        int64_t freq = t->freq[here->word];
        if (left >= 0) { /* (x, a) at `left` becomes (x, new) */
            move(t, left, made_pair(t, t->at[left].token, new, new, merge), freq);
        }
        int32_t gone = t->at[j].pair; /* (b, y), or none at the word's end */
        if (gone >= 0) {
            t->count[gone] -= freq;
            t->at[j].pair = -1;
        }
        if (k >= 0) { /* (b, y) at j becomes (new, y) at i */
            move(t, i, made_pair(t, new, t->at[k].token, new, merge), freq);
            t->at[k].prev = i;
        } else {
            here->pair = -1;
        }
        here->token = new;
        here->next = k;
    }
    t->count[p] = 0; /* Python: pair_counts.pop((a, b)) */
    t->pairs[p].len = 0;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The merge loop                                                                                   */
/* ---------------------------------------------------------------------------------------------- */

/* Run merges until `target` merges are recorded in `merges` (pairs of ids) or the pairs run out.
 * Python twin: the `while` loop of _learn_merges_python. Touches no Python object: runs without
 * the GIL. Returns 0, or -1 when out of memory. */
static int run_merges(Trainer *t, int32_t *merges, size_t *num_merges, size_t target) {
    while (*num_merges < target) {
        int32_t best = best_pair(t);
        if (best == -1) break;
        if (best < 0) return -1;
        int32_t a = t->pairs[best].a, b = t->pairs[best].b;
        int32_t new = (int32_t)t->num_tokens;
        if (add_token(t, a, b)) return -1;
        merges[2 * *num_merges] = a;
        merges[2 * *num_merges + 1] = b;
        int32_t merge = (int32_t)(*num_merges)++;
        if (merge_pair(t, best, new, merge)) return -1;
        for (size_t n = 0; n < t->made_len; n++) {
            if (file_pair(t, t->made[n])) return -1;
        }
        if (file_fresh(t)) return -1;
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
    if (init_tokens(&t)) {
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
    t.made_left = malloc((256 + target) * sizeof(Made)); /* the tokens there can be */
    t.made_right = malloc((256 + target) * sizeof(Made));
    if (merges == NULL || t.made_left == NULL || t.made_right == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(t.made_left, 0xff, (256 + target) * sizeof(Made)); /* merge -1: made by no merge */
    memset(t.made_right, 0xff, (256 + target) * sizeof(Made));
    size_t done_merges = 0, reported = 0;
    while (done_merges < target && (t.heap_len || t.parked_len)) {
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
