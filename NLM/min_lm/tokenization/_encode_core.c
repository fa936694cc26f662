/* _encode_core: BPETokenizer's encoding loops in C, against the CPython API only.
 *
 * tokenizer.py is the reference: every function here names its Python twin, computes the same
 * result and is tested against it (tests/test_tokenizer_native.py). The Python object is
 * `Encoder`, built once per tokenizer by `BPETokenizer._native_encoder` from tables the tokenizer
 * already has, and its own caches of chunks and of pre-tokens (`Cache`, the twin of `_Cache`, bounded
 * the same way).
 *
 * Tokens are numbered internally by their *index* in `id_objects` (a dense 0..V-1 numbering of the
 * vocab's ids, which may be any Python ints); output ids are the Python ints themselves.
 *
 * Safety: every index read from Python is range-checked when the Encoder is built; every buffer is
 * sized from the input with overflow checks; all references are owned (no borrowed reference is
 * held across a call that could run Python code); the GIL is released only around the merge of a
 * long pre-token, which touches nothing but this call's own arrays and the read-only pair table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Character classes of GPT-2's pattern, per code point (built in Python from the `regex` module). */
enum { OTHER = 0, LETTER = 1, NUMBER = 2, SPACE = 3 };
#define NUM_CODE_POINTS 0x110000

/* Pre-tokens at least this long are merged with the GIL released (shorter ones: not worth it). */
#define RELEASE_GIL_BYTES 4096
/* A new cache generation starts with room for this many chunks, and grows up to the cache size. */
#define INITIAL_CACHE_ENTRIES 512
/* Pre-tokens up to this long are merged in stack buffers, longer ones in heap memory. */
#define STACK_BYTES 128

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif


/* ---------------------------------------------------------------------------------------------
 * The merge table: (left index, right index) -> (rank, merged index); twin of the tokenizer's
 * `_merge_rank` dict and `_merged_id` list. Open addressing with linear probing, at most half full.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t key;   /* left << 32 | right */
    int32_t rank;   /* -1: empty slot */
    int32_t merged;
} PairSlot;

static inline uint64_t pair_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static inline size_t pair_hash(uint64_t key, size_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & mask;
}

/* The slot of (left, right), or NULL if that pair has no merge: twin of `rank_of.get(pair)`. */
static inline const PairSlot *find_pair(const PairSlot *pairs, size_t mask, int32_t left, int32_t right)
{
    uint64_t key = pair_key(left, right);
    for (size_t i = pair_hash(key, mask);; i = (i + 1) & mask) {
        if (pairs[i].rank < 0)
            return NULL;
        if (pairs[i].key == key)
            return &pairs[i];
    }
}

/* ---------------------------------------------------------------------------------------------
 * The chunk cache: twin of `_Cache` (tokenizer.py). Keys are the chunk's code points, hashed with
 * SipHash-1-3 under a random key (so that no input can be crafted to collide), looked up in place
 * in the text without making a string; values are token indices. Two generations of at most
 * `max_size` entries each, and no key longer than `max_key_chars`, as in `_Cache`.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t length;
} Text;

static inline Py_UCS4 char_at(Text t, Py_ssize_t i)
{
    return PyUnicode_READ(t.kind, t.data, i);
}

static Text text_of(PyObject *str)
{
    return (Text){PyUnicode_KIND(str), PyUnicode_DATA(str), PyUnicode_GET_LENGTH(str)};
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                  \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                  \
    } while (0)

/* SipHash-1-3 of t[start:end] (twin of `hash(str)`, also a keyed SipHash), two code points per 64-bit
 * word; the last word holds the length and, for an odd length, the last code point (or 0x110000, which
 * is no code point). */
static uint64_t hash_chars(const uint64_t key[2], Text t, Py_ssize_t start, Py_ssize_t end)
{
    uint64_t v0 = key[0] ^ 0x736f6d6570736575ULL, v1 = key[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = key[0] ^ 0x6c7967656e657261ULL, v3 = key[1] ^ 0x7465646279746573ULL;
    Py_ssize_t i = start;
    for (; i + 1 < end; i += 2) {
        uint64_t m = (uint64_t)char_at(t, i) | ((uint64_t)char_at(t, i + 1) << 32);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t m = (i < end ? (uint64_t)char_at(t, i) : 0x110000) | ((uint64_t)(end - start) << 32);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* One cached chunk: its code points, then its ids (token indices), in one allocation. */
typedef struct {
    uint64_t hash;
    Py_ssize_t length, num_ids;
    int32_t data[]; /* code points (all below 0x110000), then token indices */
} ChunkEntry;

/* A slot keeps the entry's hash beside it, so that probing past other entries reads no entry. */
typedef struct {
    uint64_t hash;
    ChunkEntry *entry; /* NULL: empty */
} Slot;

/* One generation: an open-addressing table of entries, at most half full; it starts small and
 * doubles as it fills (a small table stays in the CPU's caches). */
typedef struct {
    Slot *slots;
    size_t mask;
    Py_ssize_t size;
} Generation;

/* Twin of `_Cache`: two generations, at most `max_size` entries each, no key over `max_key_chars`. */
typedef struct {
    Generation current, previous;
    Py_ssize_t max_size, max_key_chars;
} Cache;

/* An empty generation with room for `count` entries. */
static int generation_init(Generation *g, Py_ssize_t count)
{
    size_t capacity = 8;
    while (capacity < 2 * (size_t)count) {
        if (capacity > ((size_t)PY_SSIZE_T_MAX / sizeof(Slot)) / 4) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    g->slots = PyMem_Calloc(capacity, sizeof(Slot));
    if (g->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    g->mask = capacity - 1;
    g->size = 0;
    return 0;
}

static void generation_clear(Generation *g)
{
    for (size_t i = 0; g->slots != NULL && i <= g->mask; i++) {
        PyMem_Free(g->slots[i].entry);
        g->slots[i].entry = NULL;
    }
    g->size = 0;
}

static void generation_free(Generation *g)
{
    generation_clear(g);
    PyMem_Free(g->slots);
    g->slots = NULL;
}

/* The entry for t[start:end], or NULL: twin of a dict lookup. */
static const ChunkEntry *generation_find(const Generation *g, uint64_t hash, Text t, Py_ssize_t start,
                                         Py_ssize_t end)
{
    Py_ssize_t length = end - start;
    for (size_t i = (size_t)hash & g->mask;; i = (i + 1) & g->mask) {
        const ChunkEntry *entry = g->slots[i].entry;
        if (entry == NULL)
            return NULL;
        if (g->slots[i].hash == hash && entry->length == length) {
            Py_ssize_t k = 0;
            while (k < length && entry->data[k] == (int32_t)char_at(t, start + k))
                k++;
            if (k == length)
                return entry;
        }
    }
}

/* Store an entry (the caller made sure there is room): twin of a dict store. */
static void generation_add(Generation *g, ChunkEntry *entry)
{
    size_t i = (size_t)entry->hash & g->mask;
    while (g->slots[i].entry != NULL)
        i = (i + 1) & g->mask;
    g->slots[i] = (Slot){entry->hash, entry};
    g->size++;
}

/* Double the table, or fail with MemoryError leaving it as it was. */
static int generation_grow(Generation *g)
{
    Generation bigger;
    if (generation_init(&bigger, (Py_ssize_t)(g->mask + 1)) < 0)
        return -1;
    for (size_t i = 0; i <= g->mask; i++)
        if (g->slots[i].entry != NULL)
            generation_add(&bigger, g->slots[i].entry);
    PyMem_Free(g->slots);
    *g = bigger;
    return 0;
}

static int cache_init(Cache *c, Py_ssize_t max_size, Py_ssize_t max_key_chars)
{
    c->max_size = max_size;
    c->max_key_chars = max_key_chars;
    if (generation_init(&c->current, INITIAL_CACHE_ENTRIES) < 0)
        return -1;
    return generation_init(&c->previous, INITIAL_CACHE_ENTRIES);
}

static void cache_free(Cache *c)
{
    generation_free(&c->current);
    generation_free(&c->previous);
}

/* A new entry for t[start:end] with the given ids (token indices), or NULL with MemoryError. */
static ChunkEntry *entry_new(uint64_t hash, Text t, Py_ssize_t start, Py_ssize_t end, const int32_t *ids,
                             Py_ssize_t num_ids)
{
    Py_ssize_t length = end - start;
    if (length > (PY_SSIZE_T_MAX - (Py_ssize_t)sizeof(ChunkEntry)) / 8 - num_ids) {
        PyErr_NoMemory();
        return NULL;
    }
    ChunkEntry *entry = PyMem_Malloc(sizeof(ChunkEntry) + (size_t)(length + num_ids) * sizeof(int32_t));
    if (entry == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    entry->hash = hash;
    entry->length = length;
    entry->num_ids = num_ids;
    for (Py_ssize_t k = 0; k < length; k++)
        entry->data[k] = (int32_t)char_at(t, start + k);
    memcpy(entry->data + length, ids, (size_t)num_ids * sizeof(int32_t));
    return entry;
}

/* Store t[start:end] -> ids in the current generation, turning generations over when it is full:
 * twin of the end of `_Cache.__missing__` and of `_Cache._turn_over`. */
static int cache_store(Cache *c, uint64_t hash, Text t, Py_ssize_t start, Py_ssize_t end,
                       const int32_t *ids, Py_ssize_t num_ids)
{
    ChunkEntry *entry = entry_new(hash, t, start, end, ids, num_ids);
    if (entry == NULL)
        return -1;
    if (c->current.size >= c->max_size) {
        Generation oldest = c->previous;
        generation_free(&oldest);
        if (generation_init(&oldest, INITIAL_CACHE_ENTRIES) < 0) {
            PyMem_Free(entry);
            return -1;
        }
        c->previous = c->current;
        c->current = oldest;
    }
    if (2 * (size_t)(c->current.size + 1) > c->current.mask + 1 && generation_grow(&c->current) < 0) {
        PyMem_Free(entry);
        return -1;
    }
    generation_add(&c->current, entry);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The Encoder object
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *id_objects;          /* tuple: token index -> id (a Python int) */
    Generation whole_tokens;       /* pre-token text -> its one token index (`_whole_token_ids`) */
    PyObject *char_classes;        /* bytes of NUM_CODE_POINTS classes */
    const unsigned char *char_class;
    int32_t byte_index[256];       /* byte -> token index (`_byte_ids`) */
    PairSlot *pairs;
    size_t pair_mask;
    uint64_t hash_key[2];          /* the key of every table's SipHash */
    Cache chunks, pretokens;       /* `_chunk_ids`, `_pretoken_ids` */
    unsigned long long merge_steps; /* heap entries popped by all merges so far (a test seam) */
} Encoder;

static int char_class_of(const Encoder *e, Py_UCS4 c)
{
    return c < NUM_CODE_POINTS ? e->char_class[c] : OTHER;
}

/* A Python int in [0, limit) as a C int, or -1 with an exception set. */
static long index_in_range(PyObject *obj, long limit, const char *what)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < 0 || value >= limit) {
        PyErr_Format(PyExc_ValueError, "%s %ld is out of range [0, %ld)", what, value, limit);
        return -1;
    }
    return value;
}

/* Fill the merge table: twin of the loop that builds `_merge_rank` and `_merged_id` in `__init__`. */
static int build_pair_table(Encoder *e, PyObject *merges, long num_tokens)
{
    PyObject *seq = PySequence_Fast(merges, "merges must be a sequence of (left, right, rank, merged)");
    if (seq == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    size_t size = 8;
    while (size < 2 * (size_t)count + 2) {
        if (size > ((size_t)PY_SSIZE_T_MAX / sizeof(PairSlot)) / 4) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        size *= 2;
    }
    e->pairs = PyMem_Malloc(size * sizeof(PairSlot));
    if (e->pairs == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < size; i++)
        e->pairs[i].rank = -1;
    e->pair_mask = size - 1;
    for (Py_ssize_t m = 0; m < count; m++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, m);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            PyErr_SetString(PyExc_TypeError, "each merge must be a tuple (left, right, rank, merged)");
            goto error;
        }
        long left = index_in_range(PyTuple_GET_ITEM(item, 0), num_tokens, "merge token index");
        long right = left < 0 ? -1 : index_in_range(PyTuple_GET_ITEM(item, 1), num_tokens, "merge index");
        long rank = right < 0 ? -1 : index_in_range(PyTuple_GET_ITEM(item, 2), INT32_MAX, "merge rank");
        long merged = rank < 0 ? -1 : index_in_range(PyTuple_GET_ITEM(item, 3), num_tokens, "merged index");
        if (merged < 0)
            goto error;
        uint64_t key = pair_key((int32_t)left, (int32_t)right);
        size_t i = pair_hash(key, e->pair_mask);
        while (e->pairs[i].rank >= 0 && e->pairs[i].key != key)
            i = (i + 1) & e->pair_mask;
        if (e->pairs[i].rank >= 0)
            continue; /* the first merge of a pair wins, as `_merge_rank.setdefault` */
        e->pairs[i].key = key;
        e->pairs[i].rank = (int32_t)rank;
        e->pairs[i].merged = (int32_t)merged;
    }
    Py_DECREF(seq);
    return 0;
error:
    Py_DECREF(seq);
    return -1;
}

/* The table of pre-tokens that are one token (str -> token index), keyed like the caches: twin of
 * `_whole_token_ids`. */
static int build_whole_tokens(Encoder *e, PyObject *whole_tokens, long num_tokens)
{
    if (generation_init(&e->whole_tokens, PyDict_GET_SIZE(whole_tokens)) < 0)
        return -1;
    PyObject *key, *value;
    Py_ssize_t position = 0;
    while (PyDict_Next(whole_tokens, &position, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "whole_tokens must map str to int");
            return -1;
        }
        long index = index_in_range(value, num_tokens, "whole token index");
        if (index < 0)
            return -1;
        int32_t index32 = (int32_t)index;
        Text t = text_of(key);
        uint64_t hash = hash_chars(e->hash_key, t, 0, t.length);
        if (generation_find(&e->whole_tokens, hash, t, 0, t.length) != NULL)
            continue;
        ChunkEntry *entry = entry_new(hash, t, 0, t.length, &index32, 1);
        if (entry == NULL)
            return -1;
        generation_add(&e->whole_tokens, entry);
    }
    return 0;
}

/* Encoder(id_objects, byte_index, merges, whole_tokens, char_classes, cache_size, cached_chars,
 *         hash_key): see `BPETokenizer._native_encoder` */
static int Encoder_init(Encoder *e, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"id_objects", "byte_index", "merges", "whole_tokens", "char_classes",
                               "cache_size", "cached_chars", "hash_key", NULL};
    PyObject *id_objects, *byte_index, *merges, *whole_tokens, *char_classes;
    Py_ssize_t cache_size, cached_chars;
    Py_buffer hash_key;
    if (e->pairs != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOO!O!nny*:Encoder", keywords, &PyTuple_Type,
                                     &id_objects, &byte_index, &merges, &PyDict_Type, &whole_tokens,
                                     &PyBytes_Type, &char_classes, &cache_size, &cached_chars, &hash_key))
        return -1;
    int ok = hash_key.len == 16;
    memcpy(e->hash_key, hash_key.buf, ok ? 16 : 0);
    PyBuffer_Release(&hash_key);
    if (!ok || cache_size < 1 || cached_chars < 0) {
        PyErr_SetString(PyExc_ValueError, "need cache_size >= 1, cached_chars >= 0 and a 16-byte hash_key");
        return -1;
    }
    Py_ssize_t num_tokens = PyTuple_GET_SIZE(id_objects);
    if (num_tokens > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many tokens for the compiled core");
        return -1;
    }
    if (PyBytes_GET_SIZE(char_classes) != NUM_CODE_POINTS) {
        PyErr_SetString(PyExc_ValueError, "char_classes must hold one class per code point");
        return -1;
    }
    const unsigned char *classes = (const unsigned char *)PyBytes_AS_STRING(char_classes);
    for (Py_ssize_t c = 0; c < NUM_CODE_POINTS; c++) {
        if (classes[c] > SPACE) {
            PyErr_SetString(PyExc_ValueError, "char_classes holds an unknown class");
            return -1;
        }
    }
    PyObject *bytes_seq = PySequence_Fast(byte_index, "byte_index must be a sequence of 256 ints");
    if (bytes_seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(bytes_seq) != 256) {
        Py_DECREF(bytes_seq);
        PyErr_SetString(PyExc_ValueError, "byte_index must hold 256 token indices");
        return -1;
    }
    for (int b = 0; b < 256; b++) {
        long index = index_in_range(PySequence_Fast_GET_ITEM(bytes_seq, b), (long)num_tokens, "byte index");
        if (index < 0) {
            Py_DECREF(bytes_seq);
            return -1;
        }
        e->byte_index[b] = (int32_t)index;
    }
    Py_DECREF(bytes_seq);
    if (cache_init(&e->chunks, cache_size, cached_chars) < 0
        || cache_init(&e->pretokens, cache_size, cached_chars) < 0
        || build_whole_tokens(e, whole_tokens, (long)num_tokens) < 0
        || build_pair_table(e, merges, (long)num_tokens) < 0) {
        cache_free(&e->chunks);
        cache_free(&e->pretokens);
        generation_free(&e->whole_tokens);
        PyMem_Free(e->pairs);
        e->pairs = NULL;
        return -1;
    }
    e->id_objects = Py_NewRef(id_objects);
    e->char_classes = Py_NewRef(char_classes);
    e->char_class = classes;
    return 0;
}

static void Encoder_dealloc(Encoder *e)
{
    Py_XDECREF(e->id_objects);
    generation_free(&e->whole_tokens);
    Py_XDECREF(e->char_classes);
    PyMem_Free(e->pairs);
    cache_free(&e->chunks);
    cache_free(&e->pretokens);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int check_ready(const Encoder *e)
{
    if (e->pairs == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The byte-pair merge: the same result as `merge_by_rank` (tokenizer.py), which keeps a list of
 * positions per rank; here a heap of (rank, position) candidates gives the next merge, which is as
 * fast in C. Pure C, so it can run without the GIL. The parts form a doubly linked list over byte
 * positions; stale candidates are skipped when popped.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int32_t rank;
    Py_ssize_t pos;
} Candidate;

static inline int candidate_less(Candidate a, Candidate b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

/* Twin of `heapq.heappush`. */
static void heap_push(Candidate *heap, Py_ssize_t *size, Candidate c)
{
    Py_ssize_t i = (*size)++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!candidate_less(c, heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = c;
}

/* Twin of `heapq.heappop`. */
static Candidate heap_pop(Candidate *heap, Py_ssize_t *size)
{
    Candidate top = heap[0], last = heap[--(*size)];
    Py_ssize_t i = 0, n = *size;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && candidate_less(heap[child + 1], heap[child]))
            child++;
        if (!candidate_less(heap[child], last))
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (n > 0)
        heap[i] = last;
    return top;
}

/* Work arrays for merging n parts: ids[n], left[n], right[n], heap[3n] (each merge pushes <= 2). */
typedef struct {
    int32_t *ids;
    Py_ssize_t *left, *right;
    Candidate *heap;
} MergeArrays;

/* Merge ids[0..n) in place; returns the new length and adds the heap pops to *steps. */
static Py_ssize_t merge_with_heap(const PairSlot *pairs, size_t mask, Py_ssize_t n, MergeArrays a,
                                  unsigned long long *steps)
{
    int32_t *ids = a.ids;
    Py_ssize_t *left = a.left, *right = a.right, heap_size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        left[i] = i - 1;
        right[i] = i + 1; /* n: no right neighbour */
    }
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        const PairSlot *slot = find_pair(pairs, mask, ids[i], ids[i + 1]);
        if (slot != NULL)
            heap_push(a.heap, &heap_size, (Candidate){slot->rank, i});
    }
    while (heap_size > 0) {
        Candidate c = heap_pop(a.heap, &heap_size);
        (*steps)++;
        Py_ssize_t i = c.pos, j = right[i];
        if (ids[i] < 0 || j == n)
            continue; /* stale: part i was merged into its left neighbour, or has none on its right */
        const PairSlot *slot = find_pair(pairs, mask, ids[i], ids[j]);
        if (slot == NULL || slot->rank != c.rank)
            continue; /* stale: part i or j changed since this entry was pushed */
        ids[i] = slot->merged;
        ids[j] = -1;
        Py_ssize_t k = right[i] = right[j];
        if (k < n) {
            left[k] = i;
            const PairSlot *next = find_pair(pairs, mask, ids[i], ids[k]);
            if (next != NULL)
                heap_push(a.heap, &heap_size, (Candidate){next->rank, i});
        }
        Py_ssize_t h = left[i];
        if (h >= 0) {
            const PairSlot *prev = find_pair(pairs, mask, ids[h], ids[i]);
            if (prev != NULL)
                heap_push(a.heap, &heap_size, (Candidate){prev->rank, h});
        }
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (ids[i] >= 0)
            ids[kept++] = ids[i];
    return kept;
}

/* A growable array of token indices: the ids of one chunk or of one encode call. */
typedef struct {
    int32_t *items;
    Py_ssize_t size, capacity;
    int32_t stack[64];
} IdBuffer;

static void ids_init(IdBuffer *b)
{
    b->items = b->stack;
    b->size = 0;
    b->capacity = 64;
}

static void ids_free(IdBuffer *b)
{
    if (b->items != b->stack)
        PyMem_Free(b->items);
    ids_init(b);
}

/* Make room for `more` indices. */
static int ids_reserve(IdBuffer *b, Py_ssize_t more)
{
    if (more <= b->capacity - b->size)
        return 0;
    Py_ssize_t capacity = b->capacity;
    while (capacity - b->size < more) {
        if (capacity > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(int32_t) / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    int32_t *items = PyMem_Malloc((size_t)capacity * sizeof(int32_t));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(items, b->items, (size_t)b->size * sizeof(int32_t));
    if (b->items != b->stack)
        PyMem_Free(b->items);
    b->items = items;
    b->capacity = capacity;
    return 0;
}

static int ids_extend(IdBuffer *b, const int32_t *ids, Py_ssize_t count)
{
    if (ids_reserve(b, count) < 0)
        return -1;
    memcpy(b->items + b->size, ids, (size_t)count * sizeof(int32_t));
    b->size += count;
    return 0;
}

/* The ids as a new list of Python ints; the buffer is emptied. */
static PyObject *ids_take(const Encoder *e, IdBuffer *b)
{
    PyObject *result = PyList_New(b->size);
    for (Py_ssize_t i = 0; result != NULL && i < b->size; i++)
        PyList_SET_ITEM(result, i, Py_NewRef(PyTuple_GET_ITEM(e->id_objects, b->items[i])));
    ids_free(b);
    return result;
}

/* Merge the bytes of one pre-token and append the resulting ids: twin of `BPETokenizer._merge`
 * (which calls `merge_by_rank` for long pre-tokens; in C the heap is as fast for short ones). */
static int merge_bytes(Encoder *e, const unsigned char *bytes, Py_ssize_t n, IdBuffer *out)
{
    int32_t stack_ids[STACK_BYTES];
    Py_ssize_t stack_links[2 * STACK_BYTES];
    Candidate stack_heap[3 * STACK_BYTES];
    MergeArrays a = {stack_ids, stack_links, stack_links + STACK_BYTES, stack_heap};
    void *memory = NULL;
    if (n > STACK_BYTES) {
        size_t per_byte = sizeof(int32_t) + 2 * sizeof(Py_ssize_t) + 3 * sizeof(Candidate);
        if ((size_t)n > (size_t)PY_SSIZE_T_MAX / per_byte) {
            PyErr_NoMemory();
            return -1;
        }
        memory = PyMem_Malloc((size_t)n * per_byte);
        if (memory == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        a.heap = memory; /* the most strictly aligned array first */
        a.left = (Py_ssize_t *)(a.heap + 3 * n);
        a.right = a.left + n;
        a.ids = (int32_t *)(a.right + n);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        a.ids[i] = e->byte_index[bytes[i]];
    unsigned long long steps = 0;
    Py_ssize_t kept;
    if (n >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        kept = merge_with_heap(e->pairs, e->pair_mask, n, a, &steps);
        Py_END_ALLOW_THREADS
    }
    else {
        kept = merge_with_heap(e->pairs, e->pair_mask, n, a, &steps);
    }
    e->merge_steps += steps;
    int status = ids_extend(out, a.ids, kept);
    PyMem_Free(memory);
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * Splitting text: twins of `_CHUNK_RE` and of GPT-2's pattern (`GPT2_REGEX`), one match at a time
 * ------------------------------------------------------------------------------------------- */

static inline int is_space(const Encoder *e, Text t, Py_ssize_t i)
{
    return char_class_of(e, char_at(t, i)) == SPACE;
}

/* The end of the chunk that starts at i: twin of one match of `_CHUNK_RE`,
 * `[W]?[^W]+|[W]+(?![^W])` (W: whitespace). Every character belongs to some chunk. */
static Py_ssize_t chunk_end(const Encoder *e, Text t, Py_ssize_t i)
{
    Py_ssize_t j = i + 1;
    if (!is_space(e, t, i) || (j < t.length && !is_space(e, t, j))) { /* [W]?[^W]+ */
        while (j < t.length && !is_space(e, t, j))
            j++;
        return j;
    }
    while (j < t.length && is_space(e, t, j)) /* [W]+ ... */
        j++;
    return j == t.length ? j : j - 1; /* ... (?![^W]): give the last one to the word that follows */
}

/* The end of the pre-token that starts at i: twin of one match of GPT-2's pattern,
 * '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static Py_ssize_t pretoken_end(const Encoder *e, Text t, Py_ssize_t i)
{
    Py_ssize_t n = t.length;
    Py_UCS4 c = char_at(t, i);
    if (c == '\'' && i + 1 < n) { /* '(?:[sdmt]|ll|ve|re) */
        Py_UCS4 d = char_at(t, i + 1);
        if (d == 's' || d == 'd' || d == 'm' || d == 't')
            return i + 2;
        if (i + 2 < n) {
            Py_UCS4 f = char_at(t, i + 2);
            if ((d == 'l' && f == 'l') || (d == 'v' && f == 'e') || (d == 'r' && f == 'e'))
                return i + 3;
        }
    }
    Py_ssize_t j = i;
    if (c == ' ' && i + 1 < n && char_class_of(e, char_at(t, i + 1)) != SPACE)
        j = i + 1; /* the optional space of " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+" */
    int cls = char_class_of(e, char_at(t, j));
    if (cls != SPACE) { /* a run of letters, of numbers, or of anything else */
        j++;
        while (j < n && char_class_of(e, char_at(t, j)) == cls)
            j++;
        return j;
    }
    j = i + 1;
    while (j < n && char_class_of(e, char_at(t, j)) == SPACE)
        j++;
    if (j == n || j - i == 1)
        return j; /* \s+(?!\S) up to the end, or \s+ for one space before a non-space */
    return j - 1; /* \s+(?!\S): leave the last space to the word that follows */
}

/* Append the UTF-8 bytes of t[start:end] to out (>= 4 bytes per character), surrogates encoded
 * like other code points: twin of `.encode("utf-8", errors="surrogatepass")`. */
static Py_ssize_t utf8_encode(Text t, Py_ssize_t start, Py_ssize_t end, unsigned char *out)
{
    Py_ssize_t k = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 c = char_at(t, i);
        if (c < 0x80) {
            out[k++] = (unsigned char)c;
        }
        else if (c < 0x800) {
            out[k++] = (unsigned char)(0xC0 | (c >> 6));
            out[k++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000) {
            out[k++] = (unsigned char)(0xE0 | (c >> 12));
            out[k++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else {
            out[k++] = (unsigned char)(0xF0 | (c >> 18));
            out[k++] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            out[k++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    return k;
}

/* Append the ids of the pre-token text[start:end]: twin of `BPETokenizer._encode_pretoken`
 * (a whole vocab entry directly, anything else through the merges). */
static int encode_pretoken(Encoder *e, Text t, Py_ssize_t start, Py_ssize_t end, uint64_t hash, IdBuffer *out)
{
    const ChunkEntry *whole = generation_find(&e->whole_tokens, hash, t, start, end);
    if (whole != NULL)
        return ids_extend(out, whole->data + whole->length, 1);
    Py_ssize_t chars = end - start;
    unsigned char stack_bytes[4 * 64] = {0}; /* (all written before use; the zeros quiet a compiler) */
    unsigned char *bytes = stack_bytes;
    if (chars > 64) {
        if (chars > PY_SSIZE_T_MAX / 4) {
            PyErr_NoMemory();
            return -1;
        }
        bytes = PyMem_Malloc(4 * (size_t)chars);
        if (bytes == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_ssize_t n = utf8_encode(t, start, end, bytes);
    int status = merge_bytes(e, bytes, n, out);
    if (bytes != stack_bytes)
        PyMem_Free(bytes);
    return status;
}

/* Computes the ids of t[start:end] (whose hash is given) and appends them. */
typedef int (*Compute)(Encoder *e, Text t, Py_ssize_t start, Py_ssize_t end, uint64_t hash, IdBuffer *out);

/* Append the ids of t[start:end] from the cache, which computes what it lacks: twin of
 * `_Cache.__getitem__` and `_Cache.__missing__`. */
static int cached(Encoder *e, Cache *c, Compute compute, Text t, Py_ssize_t start, Py_ssize_t end,
                  uint64_t hash, IdBuffer *out)
{
    const ChunkEntry *entry = generation_find(&c->current, hash, t, start, end);
    if (entry != NULL)
        return ids_extend(out, entry->data + entry->length, entry->num_ids);
    if (end - start > c->max_key_chars)
        return compute(e, t, start, end, hash, out);
    Py_ssize_t first = out->size;
    entry = c->previous.size > 0 ? generation_find(&c->previous, hash, t, start, end) : NULL;
    int status = entry != NULL ? ids_extend(out, entry->data + entry->length, entry->num_ids)
                               : compute(e, t, start, end, hash, out);
    if (status < 0)
        return -1;
    /* the new entry is made from the ids just appended to `out`, never from `entry`, which turning
     * the generations over may free */
    return cache_store(c, hash, t, start, end, out->items + first, out->size - first);
}

/* Append the ids of the chunk t[start:end]: twin of `BPETokenizer._encode_chunk` (its pre-tokens,
 * each from the pre-token cache; a chunk that is one pre-token skips that cache, as the chunk cache
 * holds it already). */
static int encode_chunk(Encoder *e, Text t, Py_ssize_t start, Py_ssize_t end, uint64_t hash, IdBuffer *out)
{
    Text chunk = {t.kind, (const char *)t.data + start * t.kind, end - start};
    for (Py_ssize_t i = 0, j; i < chunk.length; i = j) {
        j = pretoken_end(e, chunk, i);
        int status = (i == 0 && j == chunk.length)
                         ? encode_pretoken(e, t, start, end, hash, out)
                         : cached(e, &e->pretokens, encode_pretoken, t, start + i, start + j,
                                  hash_chars(e->hash_key, chunk, i, j), out);
        if (status < 0)
            return -1;
    }
    return 0;
}

/* Encoder.encode_ordinary(text) -> list of ids: twin of `BPETokenizer._encode_ordinary`
 * (the ids of each chunk, from the cache). */
static PyObject *Encoder_encode_ordinary(Encoder *e, PyObject *args)
{
    PyObject *text;
    if (check_ready(e) < 0 || !PyArg_ParseTuple(args, "U:encode_ordinary", &text))
        return NULL;
    Text t = text_of(text);
    IdBuffer out;
    ids_init(&out);
    /* One chunk ahead: the next chunk's slot is fetched from memory while this one is looked up
     * (a lookup mostly waits for memory; this saves about a tenth of the time). */
    Py_ssize_t end = t.length > 0 ? chunk_end(e, t, 0) : 0;
    uint64_t hash = hash_chars(e->hash_key, t, 0, end);
    for (Py_ssize_t start = 0; start < t.length;) {
        Py_ssize_t next_end = end < t.length ? chunk_end(e, t, end) : end;
        uint64_t next_hash = hash_chars(e->hash_key, t, end, next_end);
        PREFETCH(&e->chunks.current.slots[next_hash & e->chunks.current.mask]);
        if (cached(e, &e->chunks, encode_chunk, t, start, end, hash, &out) < 0) {
            ids_free(&out);
            return NULL;
        }
        start = end;
        end = next_end;
        hash = next_hash;
    }
    return ids_take(e, &out);
}

/* Encoder.merge(token: bytes) -> list of ids: twin of `BPETokenizer._merge`. */
static PyObject *Encoder_merge(Encoder *e, PyObject *args)
{
    Py_buffer token;
    if (check_ready(e) < 0 || !PyArg_ParseTuple(args, "y*:merge", &token))
        return NULL;
    IdBuffer out;
    ids_init(&out);
    int status = merge_bytes(e, token.buf, token.len, &out);
    PyBuffer_Release(&token);
    if (status < 0) {
        ids_free(&out);
        return NULL;
    }
    return ids_take(e, &out);
}

/* The pieces of `text` cut at the ends that `end_of` finds. */
static PyObject *split_with(Encoder *e, PyObject *args, const char *format,
                            Py_ssize_t (*end_of)(const Encoder *, Text, Py_ssize_t))
{
    PyObject *text;
    if (check_ready(e) < 0 || !PyArg_ParseTuple(args, format, &text))
        return NULL;
    Text t = text_of(text);
    PyObject *pieces = PyList_New(0);
    for (Py_ssize_t i = 0, j; pieces != NULL && i < t.length; i = j) {
        j = end_of(e, t, i);
        PyObject *piece = PyUnicode_Substring(text, i, j);
        if (piece == NULL || PyList_Append(pieces, piece) < 0)
            Py_CLEAR(pieces);
        Py_XDECREF(piece);
    }
    return pieces;
}

/* Encoder.chunks(text) -> list of str: twin of `_CHUNK_RE.findall(text)`. */
static PyObject *Encoder_chunks(Encoder *e, PyObject *args)
{
    return split_with(e, args, "U:chunks", chunk_end);
}

/* Encoder.pretokens(text) -> list of str: twin of `GPT2_REGEX.findall(text)`. */
static PyObject *Encoder_pretokens(Encoder *e, PyObject *args)
{
    return split_with(e, args, "U:pretokens", pretoken_end);
}

static PyObject *Encoder_get_merge_steps(Encoder *e, void *closure)
{
    return PyLong_FromUnsignedLongLong(e->merge_steps);
}

static PyMethodDef Encoder_methods[] = {
    {"encode_ordinary", (PyCFunction)Encoder_encode_ordinary, METH_VARARGS,
     "encode_ordinary(text) -> ids of text without special tokens (BPETokenizer._encode_ordinary)"},
    {"merge", (PyCFunction)Encoder_merge, METH_VARARGS,
     "merge(token_bytes) -> ids after applying the merges (BPETokenizer._merge)"},
    {"chunks", (PyCFunction)Encoder_chunks, METH_VARARGS, "chunks(text) -> _CHUNK_RE.findall(text)"},
    {"pretokens", (PyCFunction)Encoder_pretokens, METH_VARARGS,
     "pretokens(text) -> GPT2_REGEX.findall(text)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Encoder_getset[] = {
    {"merge_steps", (getter)Encoder_get_merge_steps, NULL,
     "heap entries popped by all merges so far: the merge loop's work, for complexity tests", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "NLM.min_lm.tokenization._encode_core.Encoder",
    .tp_doc = "BPETokenizer's encoding tables and loops in C (see tokenizer.py for the Python twins).",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

static struct PyModuleDef encode_core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_encode_core",
    .m_doc = "Compiled core of BPETokenizer's encoder; tokenizer.py holds the Python reference.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__encode_core(void)
{
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&encode_core_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
