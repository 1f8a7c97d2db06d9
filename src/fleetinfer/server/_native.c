/* The client's repeated call in C: `fleetinfer.server.channel` explains what a repeated call is.

A `Lane` belongs to one `Channel` (one socket, one shared-memory region). Python keeps each
repeated call in it (`keep`), keyed by the layout of its inputs; `call` then does, for a request
whose layout it knows, what `Channel._repeat` does in Python: copy the inputs that are not in
the region to their staging ranges, write a fresh request id into the kept frame, send it, wait
for the reply (polling for up to the spin budget, then blocking) with the GIL released, compare
the reply with the kept one and copy the outputs out. Anything else goes back to Python: a
layout it does not know or cannot key (None), a reply other than the kept one (a tuple for
`Channel._settle`), a broken connection (ConnectionError, or OSError from the socket).

Why C: under load every worker process wakes on a core that ONNX Runtime has just used for a
millisecond, and each line of Python it runs there costs several times what it costs in a hot
loop, and evicts part of the model the server runs next (docs/model-server.md, "Native
request path"). This file only moves bytes: every decision about what to keep, and every error,
is made in Python.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#define HEADER_SIZE 12
#define REQUEST_ID_AT 4
#define LENGTH_AT 8
#define MAX_BODY_BYTES (64 * 1024)
#define PROTOCOL_VERSION 1
#define KIND_INFER 2
#define KIND_OK 16
#define MAX_FAST 64 /* kept layouts per connection, as requests.CACHED_LAYOUTS_MAX */
#define MAX_INPUTS 16
#define KEY_MAX_BYTES 2048
#define MEAN_WEIGHT_SHIFT 3 /* as spin.py: each wait moves the mean by 1/8 of its difference */
#define NOT_IN_REGION (-1)
#define REPLY_BYTES (HEADER_SIZE + MAX_BODY_BYTES)
#define READ_BYTES (2 * REPLY_BYTES)

/* Buffers come from malloc, not from the object (which CPython zeroes): a page costs memory
   only once a frame has been written to it, and most frames are a few hundred bytes. */
static char *buffer_new(size_t n) {
    char *buffer = PyMem_RawMalloc(n);
    if (buffer == NULL) PyErr_NoMemory();
    return buffer;
}

/* A server connection's buffers are pages of their own (mmap), given back to the system when
   the connection ends (munmap). From malloc, they came from the accepting thread's arena and
   went back to it freed by another thread; connections that come and go then left the arenas
   ever more fragmented, their written pages still resident: +3 to +5 MB of RSS per 2,700
   connections and rising (benchmarks/connect_churn.py, docs/model-server.md, "Connections
   that come and go"). Untouched pages still cost nothing. */
#define LANE_PAGES_BYTES (READ_BYTES + REPLY_BYTES)

static char *pages_new(size_t n) {
    void *pages = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) {
        PyErr_NoMemory();
        return NULL;
    }
    return pages;
}

typedef struct {
    PyObject_HEAD
    int fd;                  /* the channel's socket; -1 once closed (the fd is Python's) */
    uintptr_t region_start;  /* the mapping of the channel's region */
    Py_ssize_t region_size;
    int64_t budget_ns;       /* spin budget per wait; 0: block at once */
    int64_t mean_wait_ns;    /* recent waits, each capped at 4 budgets (spin.py) */
    uint32_t last_id;
    int busy;                /* a call is in flight (the GIL is released meanwhile) */
    PyObject *ndarray_type;  /* numpy.ndarray: only its exact instances are keyed */
    PyObject *calls;         /* dict: key (bytes) -> (token, frame, staged, reply, outputs) */
    char *reply;             /* REPLY_BYTES: where replies land */
} Lane;

static PyObject *copy_name; /* "copy" */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A wait that began at `started_ns` is over: fold its length, capped at 4 budgets, into the
   running mean that says whether spinning is worth it (spin.py, `Spinner.answered`). */
static void fold_wait(int64_t *mean_wait_ns, int64_t budget_ns, int64_t started_ns) {
    int64_t waited_ns = now_ns() - started_ns;
    if (waited_ns > 4 * budget_ns) waited_ns = 4 * budget_ns;
    *mean_wait_ns += (waited_ns - *mean_wait_ns) >> MEAN_WEIGHT_SHIFT;
}

/* ---- keys: the model, the version and, per input, name, format, shape and placement ---- */

typedef struct {
    char bytes[KEY_MAX_BYTES];
    Py_ssize_t used;
} Key;

static int key_add(Key *key, const void *data, Py_ssize_t n) {
    if (key->used + n > KEY_MAX_BYTES) return 0;
    memcpy(key->bytes + key->used, data, (size_t)n);
    key->used += n;
    return 1;
}

static int key_add_int(Key *key, int64_t value) { return key_add(key, &value, sizeof value); }

static int key_add_str(Key *key, PyObject *text) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (utf8 == NULL) return -1;
    return key_add_int(key, n) && key_add(key, utf8, n);
}

/* Formats copied byte for byte: numeric and bool, native byte order (no prefix). */
static int plain_format(const char *format) {
    return format != NULL && format[0] != '\0' && format[1] == '\0' &&
           strchr("?bBhHiIlLqQefd", format[0]) != NULL;
}

typedef struct {
    Py_buffer views[MAX_INPUTS];
    Py_ssize_t count;
} Buffers;

static void buffers_release(Buffers *buffers) {
    for (Py_ssize_t i = 0; i < buffers->count; i++) PyBuffer_Release(&buffers->views[i]);
    buffers->count = 0;
}

/* 1: `key` and `buffers` filled; 0: this request cannot be keyed (Python takes it);
   -1: an exception is set. The caller releases `buffers` in every case. With `copied_in`,
   every input is keyed as copied in, wherever it lies: the key of a call kept with all its
   inputs staged (`channel._copied_in_key`). `*in_region` says whether an input lay in the
   region. */
static int make_key(Lane *self, PyObject *model, PyObject *version, PyObject *inputs, Key *key,
                    Buffers *buffers, int copied_in, int *in_region) {
    key->used = 0;
    buffers->count = 0;
    *in_region = 0;
    if (!PyUnicode_Check(model) || !PyDict_CheckExact(inputs)) return 0;
    if (PyDict_GET_SIZE(inputs) > MAX_INPUTS) return 0;
    int64_t version_number = 0;
    if (version != Py_None) {
        if (!PyLong_CheckExact(version)) return 0;
        version_number = PyLong_AsLongLong(version);
        if (version_number == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    }
    int added = key_add_str(key, model);
    if (added <= 0) return added;
    if (!key_add_int(key, version_number)) return 0;
    Py_ssize_t position = 0;
    PyObject *name, *array;
    while (PyDict_Next(inputs, &position, &name, &array)) {
        if (!PyUnicode_Check(name) || Py_TYPE(array) != (PyTypeObject *)self->ndarray_type) return 0;
        Py_buffer *view = &buffers->views[buffers->count];
        if (PyObject_GetBuffer(array, view, PyBUF_RECORDS_RO) < 0) {
            PyErr_Clear(); /* e.g. a datetime dtype: Python raises the proper error */
            return 0;
        }
        buffers->count++;
        if (!plain_format(view->format) || !PyBuffer_IsContiguous(view, 'C')) return 0;
        added = key_add_str(key, name);
        if (added <= 0) return added;
        uintptr_t start = (uintptr_t)view->buf;
        int64_t placed = NOT_IN_REGION;
        if (start >= self->region_start && view->len <= self->region_size &&
            start - self->region_start <= (uintptr_t)(self->region_size - view->len)) {
            *in_region = 1;
            if (!copied_in) placed = (int64_t)(start - self->region_start);
        }
        if (!key_add(key, view->format, 1) || !key_add_int(key, view->itemsize) ||
            !key_add_int(key, view->ndim) || !key_add_int(key, placed))
            return 0;
        for (int d = 0; d < view->ndim; d++)
            if (!key_add_int(key, view->shape[d])) return 0;
    }
    return 1;
}

/* ---- the exchange, with the GIL released ---- */

typedef enum { SENT_OK, SENT_ERRNO, SENT_CLOSED, SENT_BAD_FRAME, SENT_SIGNAL } Outcome;

/* Re-take the GIL to run signal handlers after EINTR; 0 to go on, -1 if one raised. */
static int handle_signals(PyThreadState **state) {
    PyEval_RestoreThread(*state);
    int failed = PyErr_CheckSignals();
    *state = PyEval_SaveThread();
    return failed;
}

/* After a send or recv failed with `errno`: wait if the socket is non-blocking, run signal
   handlers if interrupted. SENT_OK to try again. On a blocking socket EAGAIN means its timeout
   (SO_RCVTIMEO / SO_SNDTIMEO, the call's deadline) ran out: SENT_ERRNO, with errno kept. */
static Outcome after_failure(int fd, short events, PyThreadState **state) {
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && (fcntl(fd, F_GETFL) & O_NONBLOCK)) {
        struct pollfd pfd = {fd, events, 0};
        if (poll(&pfd, 1, -1) >= 0) return SENT_OK;
    }
    if (errno == EINTR) return handle_signals(state) < 0 ? SENT_SIGNAL : SENT_OK;
    return SENT_ERRNO;
}

static Outcome send_all(int fd, const char *data, size_t n, PyThreadState **state) {
    while (n > 0) {
        ssize_t sent = send(fd, data, n, MSG_NOSIGNAL);
        if (sent >= 0) {
            data += sent;
            n -= (size_t)sent;
        } else {
            Outcome outcome = after_failure(fd, POLLOUT, state);
            if (outcome != SENT_OK) return outcome;
        }
    }
    return SENT_OK;
}

/* One recv of at most `capacity - *got` bytes into `into + *got`. */
static Outcome receive(int fd, char *into, size_t capacity, size_t *got, PyThreadState **state) {
    ssize_t n = recv(fd, into + *got, capacity - *got, 0);
    if (n > 0) {
        *got += (size_t)n;
        return SENT_OK;
    }
    return n == 0 ? SENT_CLOSED : after_failure(fd, POLLIN, state);
}

/* Poll for the reply for up to the budget, yielding the core between polls (spin.py). A signal
   that comes meanwhile mostly lands outside a system call that it could interrupt, so before the
   caller blocks, Python's handlers run (a task's time limit raises from its SIGALRM handler): 0
   to go on, -1 if one raised. */
static int spin(Lane *self, int64_t started_ns, PyThreadState **state) {
    if (self->budget_ns <= 0 || self->mean_wait_ns > self->budget_ns) return 0;
    int64_t deadline_ns = started_ns + self->budget_ns;
    struct pollfd pfd = {self->fd, POLLIN, 0};
    for (;;) {
        int ready = poll(&pfd, 1, 0);
        if (ready > 0 || (ready < 0 && errno != EINTR)) return 0; /* recv says what failed */
        if (ready < 0 || now_ns() >= deadline_ns) return handle_signals(state);
        sched_yield();
    }
}

/* Send `frame`, read one whole reply frame into `self->reply`; its body length in `length`.
   The first recv takes whatever came (the header and body usually arrive together); bytes
   beyond the reply mean the stream is out of step. */
static Outcome exchange(Lane *self, const char *frame, size_t frame_size, size_t *length) {
    PyThreadState *state = PyEval_SaveThread();
    int64_t started_ns = now_ns();
    Outcome outcome = send_all(self->fd, frame, frame_size, &state);
    size_t got = 0, end = 0; /* end: 0 until the header is in */
    if (outcome == SENT_OK && spin(self, started_ns, &state) < 0) outcome = SENT_SIGNAL;
    while (outcome == SENT_OK && got < (end ? end : HEADER_SIZE)) {
        outcome = receive(self->fd, self->reply, end ? end : REPLY_BYTES, &got, &state);
        if (outcome == SENT_OK && end == 0 && got >= HEADER_SIZE) {
            uint32_t body;
            memcpy(&body, self->reply + LENGTH_AT, sizeof body);
            if (self->reply[0] != 'F' || self->reply[1] != 'I' || body > MAX_BODY_BYTES)
                outcome = SENT_BAD_FRAME;
            else
                end = HEADER_SIZE + body;
        }
    }
    if (outcome == SENT_OK && got > end) outcome = SENT_BAD_FRAME;
    int failure = errno; /* for raise_outcome: what follows must not change it */
    fold_wait(&self->mean_wait_ns, self->budget_ns, started_ns);
    PyEval_RestoreThread(state);
    errno = failure;
    *length = end > HEADER_SIZE ? end - HEADER_SIZE : 0;
    return outcome;
}

static PyObject *raise_outcome(Outcome outcome) {
    switch (outcome) {
        case SENT_ERRNO:
            return PyErr_SetFromErrno(PyExc_OSError);
        case SENT_CLOSED:
            PyErr_SetString(PyExc_ConnectionError, "the model server closed the connection");
            return NULL;
        case SENT_BAD_FRAME:
            PyErr_SetString(PyExc_ConnectionError,
                            "the model server sent a frame this client cannot parse");
            return NULL;
        default: /* SENT_SIGNAL: a signal handler raised; its exception is set */
            return NULL;
    }
}

/* ---- Lane methods ---- */

static int Lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "region_address", "region_size", "spin_us", "ndarray", NULL};
    unsigned long long address;
    Py_ssize_t size;
    double spin_us;
    PyObject *ndarray;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKndO!", kwlist, &self->fd, &address, &size,
                                     &spin_us, &PyType_Type, &ndarray))
        return -1;
    self->region_start = (uintptr_t)address;
    self->region_size = size;
    self->budget_ns = spin_us > 0 ? (int64_t)(spin_us * 1000) : 0;
    Py_XSETREF(self->ndarray_type, Py_NewRef(ndarray));
    Py_XSETREF(self->calls, PyDict_New());
    if (self->calls == NULL) return -1;
    if (self->reply == NULL && (self->reply = buffer_new(REPLY_BYTES)) == NULL) return -1;
    return 0;
}

static void Lane_dealloc(Lane *self) {
    Py_XDECREF(self->ndarray_type);
    Py_XDECREF(self->calls);
    PyMem_RawFree(self->reply);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_next_id(Lane *self, PyObject *Py_UNUSED(ignored)) {
    if (++self->last_id == 0) self->last_id = 1; /* 0 answers any request: never sent */
    return PyLong_FromUnsignedLong(self->last_id);
}

/* key(model, version, inputs, copied_in=False): the key `call` looks a request up by; with
   copied_in, the key of the call kept with every input staged (see `make_key`). */
static PyObject *Lane_key(Lane *self, PyObject *args) {
    PyObject *model, *version, *inputs;
    int copied_in = 0, in_region;
    if (!PyArg_ParseTuple(args, "OOO|p", &model, &version, &inputs, &copied_in)) return NULL;
    Key key;
    Buffers buffers;
    int made = make_key(self, model, version, inputs, &key, &buffers, copied_in, &in_region);
    buffers_release(&buffers);
    if (made < 0) return NULL;
    if (made == 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(key.bytes, key.used);
}

/* keep(key, token, frame, staged, reply, outputs): staged is a tuple, per input in order, of
   the address its bytes are copied to, or None for an input read in place. */
static PyObject *Lane_keep(Lane *self, PyObject *args) {
    PyObject *key, *token, *frame, *staged, *reply, *outputs;
    if (!PyArg_ParseTuple(args, "O!OO!O!O!O!", &PyBytes_Type, &key, &token, &PyByteArray_Type,
                          &frame, &PyTuple_Type, &staged, &PyBytes_Type, &reply, &PyTuple_Type,
                          &outputs))
        return NULL;
    if (PyByteArray_GET_SIZE(frame) < HEADER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "a kept frame holds at least a header");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(staged); i++) {
        PyObject *address = PyTuple_GET_ITEM(staged, i);
        if (address != Py_None && !PyLong_Check(address)) {
            PyErr_SetString(PyExc_TypeError, "a staging address is an int or None");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outputs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(outputs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "outputs are (name, view) pairs");
            return NULL;
        }
    }
    PyObject *entry = PyTuple_Pack(5, token, frame, staged, reply, outputs);
    if (entry == NULL) return NULL;
    int failed = PyDict_SetItem(self->calls, key, entry);
    Py_DECREF(entry);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Lane_clear(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyDict_Clear(self->calls);
    Py_RETURN_NONE;
}

/* rebind(region_address, region_size): the region was replaced (grown); forgets every call. */
static PyObject *Lane_rebind(Lane *self, PyObject *args) {
    unsigned long long address;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "Kn", &address, &size)) return NULL;
    PyDict_Clear(self->calls);
    self->region_start = (uintptr_t)address;
    self->region_size = size;
    Py_RETURN_NONE;
}

static PyObject *Lane_close(Lane *self, PyObject *Py_UNUSED(ignored)) {
    self->fd = -1;
    PyDict_Clear(self->calls);
    Py_RETURN_NONE;
}

static int stage_inputs(PyObject *staged, Buffers *buffers) {
    if (PyTuple_GET_SIZE(staged) != buffers->count) {
        PyErr_SetString(PyExc_RuntimeError, "a kept call's staging does not match its inputs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < buffers->count; i++) {
        PyObject *address = PyTuple_GET_ITEM(staged, i);
        if (address == Py_None) continue;
        void *target = PyLong_AsVoidPtr(address);
        if (target == NULL && PyErr_Occurred()) return -1;
        memcpy(target, buffers->views[i].buf, (size_t)buffers->views[i].len);
    }
    return 0;
}

static PyObject *copied_outputs(PyObject *outputs) {
    PyObject *result = PyDict_New();
    if (result == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outputs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(outputs, i);
        PyObject *copy = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(pair, 1), copy_name);
        if (copy == NULL || PyDict_SetItem(result, PyTuple_GET_ITEM(pair, 0), copy) < 0) {
            Py_XDECREF(copy);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(copy);
    }
    return result;
}

/* The kept call of `key` (borrowed) in `*entry`, NULL if none: 1, or -1 with an exception. */
static int find_call(Lane *self, const Key *key, PyObject **entry) {
    PyObject *key_bytes = PyBytes_FromStringAndSize(key->bytes, key->used);
    if (key_bytes == NULL) return -1;
    *entry = PyDict_GetItemWithError(self->calls, key_bytes);
    Py_DECREF(key_bytes);
    return *entry == NULL && PyErr_Occurred() ? -1 : 1;
}

/* call(model, version, inputs) -> dict of outputs | None | (token, kind, payload) */
static PyObject *Lane_call(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "call(model, version, inputs)");
        return NULL;
    }
    if (self->fd < 0 || self->reply == NULL) Py_RETURN_NONE; /* closed, or never set up */
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "a channel is used by one thread at a time");
        return NULL;
    }
    Key key;
    Buffers buffers;
    int in_region;
    PyObject *entry = NULL;
    int made = make_key(self, args[0], args[1], args[2], &key, &buffers, 0, &in_region);
    if (made > 0) made = find_call(self, &key, &entry);
    if (made > 0 && entry == NULL && in_region) {
        /* an input in the region, not where a kept call reads it in place: a call kept with
           its inputs staged takes it wherever it lies (a task's windows, one after another) */
        buffers_release(&buffers);
        made = make_key(self, args[0], args[1], args[2], &key, &buffers, 1, &in_region);
        if (made > 0) made = find_call(self, &key, &entry);
    }
    if (made > 0 && entry != NULL) {
        Py_INCREF(entry);
        if (stage_inputs(PyTuple_GET_ITEM(entry, 2), &buffers) < 0) made = -1;
    }
    buffers_release(&buffers);
    if (made < 0) {
        Py_XDECREF(entry);
        return NULL;
    }
    if (entry == NULL) Py_RETURN_NONE;

    PyObject *frame = PyTuple_GET_ITEM(entry, 1), *reply = PyTuple_GET_ITEM(entry, 3);
    char *data = PyByteArray_AS_STRING(frame);
    if (++self->last_id == 0) self->last_id = 1;
    uint32_t request_id = self->last_id;
    memcpy(data + REQUEST_ID_AT, &request_id, sizeof request_id); /* little-endian, as HEADER */
    size_t length;
    self->busy = 1;
    Outcome outcome = exchange(self, data, (size_t)PyByteArray_GET_SIZE(frame), &length);
    self->busy = 0;
    PyObject *result = NULL;
    if (outcome != SENT_OK) {
        result = raise_outcome(outcome);
    } else {
        uint8_t kind = (uint8_t)self->reply[3];
        uint32_t reply_id;
        memcpy(&reply_id, self->reply + REQUEST_ID_AT, sizeof reply_id);
        const char *body = self->reply + HEADER_SIZE;
        if (reply_id != request_id && reply_id != 0) {
            PyErr_Format(PyExc_ConnectionError, "reply %u does not answer request %u", reply_id,
                         request_id);
        } else if (kind == KIND_OK && (Py_ssize_t)length == PyBytes_GET_SIZE(reply) &&
                   memcmp(body, PyBytes_AS_STRING(reply), length) == 0) {
            result = copied_outputs(PyTuple_GET_ITEM(entry, 4));
        } else {
            result = Py_BuildValue("(Oiy#)", PyTuple_GET_ITEM(entry, 0), (int)kind, body,
                                   (Py_ssize_t)length);
        }
    }
    Py_DECREF(entry);
    return result;
}

static PyObject *Lane_len(Lane *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(PyDict_GET_SIZE(self->calls));
}

static PyMethodDef Lane_methods[] = {
    {"call", (PyCFunction)(void (*)(void))Lane_call, METH_FASTCALL,
     "call(model, version, inputs): the outputs of a kept call; None if none is kept for this "
     "layout; (token, kind, payload) for a reply other than the kept one."},
    {"key", (PyCFunction)Lane_key, METH_VARARGS,
     "key(model, version, inputs): the key `keep` files a call under; None if it has none."},
    {"keep", (PyCFunction)Lane_keep, METH_VARARGS,
     "keep(key, token, frame, staged, reply, outputs): keep (or replace) a repeated call."},
    {"clear", (PyCFunction)Lane_clear, METH_NOARGS, "Forget every kept call."},
    {"rebind", (PyCFunction)Lane_rebind, METH_VARARGS,
     "rebind(region_address, region_size): a new region; forgets every kept call."},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "Never touch the socket again."},
    {"next_id", (PyCFunction)Lane_next_id, METH_NOARGS, "The next request id (never 0)."},
    {"kept", (PyCFunction)Lane_len, METH_NOARGS, "How many calls are kept."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fleetinfer.server._native.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The repeated calls of one channel, run in C (module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
};


/* ==== The server's end: a connection's repeated requests, served in C ====

A `ServerLane` reads a connection's frames. A request whose body is one the connection kept
(`keep`: a layout validated before, whose direct plan is made) is served right there: the
region's file checked against shrinking, the model run through the executor's `run_direct`
(which takes an instance, runs the plan's I/O binding and gives the instance back: the one piece
of Python on this path), the kept reply sent. Every other frame goes back to Python (`serve`
returns it), which handles it as before. The GIL is held only to run the model: waiting for a
request, reading it and answering it run without it. */

/* How many requests the server has read and not answered, over all its connections. */
typedef struct {
    PyObject_HEAD
    atomic_long count;
} Tally;

static PyObject *Tally_read(Tally *self, PyObject *Py_UNUSED(ignored)) {
    atomic_fetch_add(&self->count, 1);
    Py_RETURN_NONE;
}

static PyObject *Tally_answered(Tally *self, PyObject *Py_UNUSED(ignored)) {
    atomic_fetch_sub(&self->count, 1);
    Py_RETURN_NONE;
}

static PyObject *Tally_in_flight(Tally *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(atomic_load(&self->count));
}

static PyMethodDef Tally_methods[] = {
    {"read", (PyCFunction)Tally_read, METH_NOARGS, "A request was read."},
    {"answered", (PyCFunction)Tally_answered, METH_NOARGS, "A request was answered."},
    {"in_flight", (PyCFunction)Tally_in_flight, METH_NOARGS, "Read and not yet answered."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fleetinfer.server._native.Tally",
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Requests read and not yet answered (an atomic count).",
    .tp_new = PyType_GenericNew,
    .tp_methods = Tally_methods,
};

/* A lock that Python (`with latch:`) and C take alike: a connection's send lock. */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
} Latch;

static int Latch_init(Latch *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Latch") || (kwds != NULL && PyDict_GET_SIZE(kwds) > 0)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Latch() takes no arguments");
        return -1;
    }
    pthread_mutex_init(&self->mutex, NULL);
    return 0;
}

static void Latch_dealloc(Latch *self) {
    pthread_mutex_destroy(&self->mutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void latch_take(Latch *self) { /* with the GIL released */
    pthread_mutex_lock(&self->mutex);
}

static PyObject *Latch_enter(Latch *self, PyObject *Py_UNUSED(ignored)) {
    if (pthread_mutex_trylock(&self->mutex) != 0) {
        Py_BEGIN_ALLOW_THREADS latch_take(self);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_TRUE;
}

static PyObject *Latch_exit(Latch *self, PyObject *Py_UNUSED(args)) {
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_FALSE;
}

static PyMethodDef Latch_methods[] = {
    {"__enter__", (PyCFunction)Latch_enter, METH_NOARGS, "Take the lock (waits without the GIL)."},
    {"__exit__", (PyCFunction)Latch_exit, METH_VARARGS, "Give the lock back."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fleetinfer.server._native.Latch",
    .tp_basicsize = sizeof(Latch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mutex taken with `with` in Python and directly in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Latch_init,
    .tp_dealloc = (destructor)Latch_dealloc,
    .tp_methods = Latch_methods,
};

typedef struct {
    PyObject *body;       /* bytes: the request body, byte for byte */
    PyObject *run;        /* the executor's run_direct */
    PyObject *args;       /* its arguments: (plan, samples) */
    PyObject *reply;      /* bytes: the encoded InferReply */
    PyObject *registry;   /* its `generation` must still be ... */
    PyObject *generation; /* ... this one */
    int region_fd;
    Py_ssize_t region_size;
} Fast;

typedef struct {
    PyObject_HEAD
    int fd;
    int readable_fd; /* the server's epoll set of connections: has any client sent data? */
    Tally *tally;
    Latch *send_latch;
    int64_t budget_ns, mean_wait_ns;
    Fast fast[MAX_FAST];
    int kept;
    size_t start, end; /* unread bytes of `buf` */
    char *buf; /* READ_BYTES, then REPLY_BYTES at `out`: one mapping, `pages_new` */
    char *out; /* a kept reply's frame */
} ServerLane;

static PyObject *generation_name;
static atomic_int one_spinner; /* one spinning connection at a time, as spin.py */

static void fast_clear(Fast *f) {
    Py_CLEAR(f->body);
    Py_CLEAR(f->run);
    Py_CLEAR(f->args);
    Py_CLEAR(f->reply);
    Py_CLEAR(f->registry);
    Py_CLEAR(f->generation);
}

static void lane_forget(ServerLane *self, int i) {
    fast_clear(&self->fast[i]);
    self->fast[i] = self->fast[--self->kept]; /* the last one moves into the gap */
    memset(&self->fast[self->kept], 0, sizeof(Fast));
}

static void lane_forget_all(ServerLane *self) {
    while (self->kept > 0) lane_forget(self, self->kept - 1);
}

static int ServerLane_init(ServerLane *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "readable_fd", "tally", "send_latch", "spin_us", NULL};
    Tally *tally;
    Latch *latch;
    double spin_us;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO!O!d", kwlist, &self->fd, &self->readable_fd,
                                     &TallyType, &tally, &LatchType, &latch, &spin_us))
        return -1;
    Py_XSETREF(self->tally, (Tally *)Py_NewRef(tally));
    Py_XSETREF(self->send_latch, (Latch *)Py_NewRef(latch));
    self->budget_ns = spin_us > 0 ? (int64_t)(spin_us * 1000) : 0;
    if (self->buf == NULL) {
        if ((self->buf = pages_new(LANE_PAGES_BYTES)) == NULL) return -1;
        self->out = self->buf + READ_BYTES;
    }
    return 0;
}

/* The connection ended: forget its kept requests and give its pages back at once (the object
   itself may live on a while); `serve` then raises EOFError. */
static void server_lane_release(ServerLane *self) {
    lane_forget_all(self);
    self->fd = -1;
    if (self->buf != NULL) munmap(self->buf, LANE_PAGES_BYTES);
    self->buf = self->out = NULL;
    self->start = self->end = 0;
}

static void ServerLane_dealloc(ServerLane *self) {
    server_lane_release(self);
    Py_XDECREF(self->tally);
    Py_XDECREF(self->send_latch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whether a spinning connection should stop: a request is being served, or a client has sent
   one that its thread has not read yet (server.py, `others_need_the_gil`). */
static int others_need_the_core(ServerLane *self) {
    if (atomic_load(&self->tally->count) > 0) return 1;
    struct pollfd pfd = {self->readable_fd, POLLIN, 0};
    return poll(&pfd, 1, 0) != 0;
}

static void server_spin(ServerLane *self, int64_t started_ns) {
    if (self->budget_ns <= 0 || self->mean_wait_ns > self->budget_ns) return;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&one_spinner, &expected, 1)) return;
    int64_t deadline_ns = started_ns + self->budget_ns;
    struct pollfd pfd = {self->fd, POLLIN, 0};
    while (poll(&pfd, 1, 0) == 0 && !others_need_the_core(self) && now_ns() < deadline_ns)
        sched_yield();
    atomic_store(&one_spinner, 0);
}

/* A fleetinfer header (magic, protocol version, a body that fits): its body length. */
static int good_header(const char *header, uint32_t *length) {
    memcpy(length, header + LENGTH_AT, sizeof *length);
    return header[0] == 'F' && header[1] == 'I' && header[2] == PROTOCOL_VERSION &&
           *length <= MAX_BODY_BYTES;
}

/* Receive until `buf` holds a whole frame (GIL released), spinning first when the connection
   is idle; `bad` set if its header is not a fleetinfer one (Python says what is wrong). */
static Outcome fill_frame(ServerLane *self, PyThreadState **state, int *bad) {
    int64_t started_ns = 0;
    *bad = 0;
    for (;;) {
        size_t have = self->end - self->start, need = HEADER_SIZE;
        if (have >= HEADER_SIZE) {
            uint32_t length;
            if (!good_header(self->buf + self->start, &length)) {
                *bad = 1;
                return SENT_OK;
            }
            need = HEADER_SIZE + length;
            if (have >= need) break;
        }
        if (have == 0) {
            self->start = self->end = 0;
            if (started_ns == 0) {
                started_ns = now_ns();
                if (self->kept > 0) server_spin(self, started_ns);
            }
        } else if (READ_BYTES - self->start < need) {
            memmove(self->buf, self->buf + self->start, have);
            self->start = 0;
            self->end = have;
        }
        Outcome outcome = receive(self->fd, self->buf, READ_BYTES, &self->end, state);
        if (outcome != SENT_OK) return outcome;
    }
    if (started_ns) fold_wait(&self->mean_wait_ns, self->budget_ns, started_ns);
    return SENT_OK;
}

static int find_fast(ServerLane *self, const char *body, size_t length) {
    for (int i = 0; i < self->kept; i++) {
        PyObject *kept = self->fast[i].body;
        if ((size_t)PyBytes_GET_SIZE(kept) == length &&
            memcmp(PyBytes_AS_STRING(kept), body, length) == 0)
            return i;
    }
    return -1;
}

/* Run kept layout `i` (GIL held): 1 ran, 0 not (Python takes the request), -1 error set. */
static int run_fast(ServerLane *self, int i) {
    Fast *f = &self->fast[i];
    PyObject *generation = PyObject_GetAttr(f->registry, generation_name);
    if (generation == NULL) return -1;
    int same = PyObject_RichCompareBool(generation, f->generation, Py_EQ);
    Py_DECREF(generation);
    if (same <= 0) {
        if (same == 0) lane_forget(self, i); /* a model was loaded or unloaded since */
        return same;
    }
    struct stat st;
    if (fstat(f->region_fd, &st) < 0 || st.st_size < f->region_size) return 0;
    PyObject *ran = PyObject_Call(f->run, f->args, NULL);
    if (ran == NULL) return -1;
    int done = PyObject_IsTrue(ran);
    Py_DECREF(ran);
    return done;
}

/* Answer with layout `i`'s kept reply (GIL released); a client gone is noticed by the next
   read, as in Python. */
static void answer_fast(ServerLane *self, int i, uint32_t request_id) {
    PyObject *reply = self->fast[i].reply;
    uint32_t length = (uint32_t)PyBytes_GET_SIZE(reply);
    char *out = self->out;
    out[0] = 'F';
    out[1] = 'I';
    out[2] = PROTOCOL_VERSION;
    out[3] = KIND_OK;
    memcpy(out + REQUEST_ID_AT, &request_id, sizeof request_id);
    memcpy(out + LENGTH_AT, &length, sizeof length);
    memcpy(out + HEADER_SIZE, PyBytes_AS_STRING(reply), length);
    latch_take(self->send_latch);
    atomic_fetch_sub(&self->tally->count, 1); /* counted out first, as Connection._answer */
    int fd = self->fd;
    size_t n = HEADER_SIZE + length;
    const char *data = out;
    while (n > 0) {
        ssize_t sent = send(fd, data, n, MSG_NOSIGNAL);
        if (sent > 0) {
            data += sent;
            n -= (size_t)sent;
        } else if (sent < 0 && errno == EINTR) {
            continue;
        } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            poll(&pfd, 1, -1);
        } else {
            break;
        }
    }
    pthread_mutex_unlock(&self->send_latch->mutex);
}

/* serve() -> (kind, request_id, body): the next frame Python must handle, after serving every
   kept request before it; kind -1 for a header that is not a fleetinfer one (body: the header).
   EOFError when the client closed the connection, OSError when the socket failed. */
static PyObject *ServerLane_serve(ServerLane *self, PyObject *Py_UNUSED(ignored)) {
    if (self->fd < 0 || self->buf == NULL || self->tally == NULL) {
        PyErr_SetString(PyExc_EOFError, "the connection is closed (or the lane was never set up)");
        return NULL;
    }
    PyThreadState *state = PyEval_SaveThread();
    for (;;) {
        int bad;
        Outcome outcome = fill_frame(self, &state, &bad);
        PyEval_RestoreThread(state);
        if (outcome == SENT_CLOSED) {
            PyErr_SetNone(PyExc_EOFError);
            return NULL;
        }
        if (outcome != SENT_OK) return raise_outcome(outcome);
        const char *header = self->buf + self->start;
        if (bad) {
            PyObject *result = Py_BuildValue("(iiy#)", -1, 0, header, (Py_ssize_t)HEADER_SIZE);
            self->start = self->end = 0; /* Python closes the connection after answering */
            return result;
        }
        uint8_t kind = (uint8_t)header[3];
        uint32_t request_id, length;
        memcpy(&request_id, header + REQUEST_ID_AT, sizeof request_id);
        memcpy(&length, header + LENGTH_AT, sizeof length);
        const char *body = header + HEADER_SIZE;
        self->start += HEADER_SIZE + length;
        atomic_fetch_add(&self->tally->count, 1);
        int i = kind == KIND_INFER ? find_fast(self, body, length) : -1;
        if (i >= 0) {
            int ran = run_fast(self, i);
            if (ran < 0) return NULL;
            if (ran > 0) {
                state = PyEval_SaveThread();
                answer_fast(self, i, request_id);
                continue;
            }
        }
        return Py_BuildValue("(iky#)", (int)kind, (unsigned long)request_id, body,
                             (Py_ssize_t)length);
    }
}

/* keep(body, run, args, reply, registry, generation, region_fd, region_size) */
static PyObject *ServerLane_keep(ServerLane *self, PyObject *args) {
    PyObject *body, *run, *run_args, *reply, *registry, *generation;
    int region_fd;
    Py_ssize_t region_size;
    if (!PyArg_ParseTuple(args, "O!OO!O!OOin", &PyBytes_Type, &body, &run, &PyTuple_Type,
                          &run_args, &PyBytes_Type, &reply, &registry, &generation, &region_fd,
                          &region_size))
        return NULL;
    if (PyBytes_GET_SIZE(reply) > MAX_BODY_BYTES) {
        PyErr_SetString(PyExc_ValueError, "a kept reply fits in one frame");
        return NULL;
    }
    int i = find_fast(self, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    if (i >= 0) {
        lane_forget(self, i);
    } else if (self->kept == MAX_FAST) {
        lane_forget_all(self); /* a client cycling through many layouts: start over */
    }
    Fast *f = &self->fast[self->kept++];
    f->body = Py_NewRef(body);
    f->run = Py_NewRef(run);
    f->args = Py_NewRef(run_args);
    f->reply = Py_NewRef(reply);
    f->registry = Py_NewRef(registry);
    f->generation = Py_NewRef(generation);
    f->region_fd = region_fd;
    f->region_size = region_size;
    Py_RETURN_NONE;
}

static PyObject *ServerLane_clear(ServerLane *self, PyObject *Py_UNUSED(ignored)) {
    lane_forget_all(self);
    Py_RETURN_NONE;
}

static PyObject *ServerLane_close(ServerLane *self, PyObject *Py_UNUSED(ignored)) {
    server_lane_release(self);
    Py_RETURN_NONE;
}

static PyObject *ServerLane_kept(ServerLane *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->kept);
}

static PyMethodDef ServerLane_methods[] = {
    {"serve", (PyCFunction)ServerLane_serve, METH_NOARGS,
     "Serve kept requests; return the next frame Python handles: (kind, request_id, body)."},
    {"keep", (PyCFunction)ServerLane_keep, METH_VARARGS,
     "keep(body, run, args, reply, registry, generation, region_fd, region_size)."},
    {"clear", (PyCFunction)ServerLane_clear, METH_NOARGS, "Forget every kept layout."},
    {"close", (PyCFunction)ServerLane_close, METH_NOARGS,
     "The connection ended: forget every kept layout, give the buffers back."},
    {"kept", (PyCFunction)ServerLane_kept, METH_NOARGS, "How many layouts are kept."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ServerLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fleetinfer.server._native.ServerLane",
    .tp_basicsize = sizeof(ServerLane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A connection's frames, its kept requests served in C (see above).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ServerLane_init,
    .tp_dealloc = (destructor)ServerLane_dealloc,
    .tp_methods = ServerLane_methods,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fleetinfer.server._native",
    .m_doc = "The client's repeated call in C (see _native.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyTypeObject *types[] = {&LaneType, &TallyType, &LatchType, &ServerLaneType};
    const char *names[] = {"Lane", "Tally", "Latch", "ServerLane"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (PyType_Ready(types[i]) < 0) return NULL;
    copy_name = PyUnicode_InternFromString("copy");
    generation_name = PyUnicode_InternFromString("generation");
    if (copy_name == NULL || generation_name == NULL) return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    /* the protocol constants compiled in, checked against protocol.py by the tests */
    if (PyModule_AddIntConstant(module, "HEADER_SIZE", HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_BODY_BYTES", MAX_BODY_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "PROTOCOL_VERSION", PROTOCOL_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "KIND_INFER", KIND_INFER) < 0 ||
        PyModule_AddIntConstant(module, "KIND_OK", KIND_OK) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
