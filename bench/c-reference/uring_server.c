/*
 * Reference server for the zerg benchmark suite: plain C on liburing, to show what the same
 * work costs with no runtime at all. Same command line and the same work as the suite's Rust
 * peers (bench/src/proto.rs):
 *
 *   uring_server --port P --workload http|echo [--buf-size N] [--threads T]
 *
 * - http: HTTP/1.1 keep-alive with pipelining. Every complete request (ending in \r\n\r\n,
 *   counted left to right without overlap, across reads) gets the fixed 78-byte response; all
 *   responses of one receive go out in one send. An incomplete request longer than 16 KiB
 *   closes the connection (the Rust peers' read buffer limit).
 * - echo: every byte received is sent back.
 *
 * One thread per --threads (default 1), each with its own ring and its own SO_REUSEPORT
 * listener on 127.0.0.1:P. Per ring: multishot accept, multishot recv into a provided buffer
 * ring (4096 buffers of 16 KiB for http, of --buf-size for echo, at most 64 MiB), send.
 * Received bytes are copied into the connection's output (echo) or scanned (http) and the
 * buffer goes back to the ring at once. A connection's pending output is bounded: above the
 * cap its receive is cancelled and re-armed once the output has drained, so a client that
 * sends without reading cannot grow the server's memory.
 *
 * Runs until killed. Errors on one connection close that connection; failures to set up the
 * ring or the listener exit with a message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";
#define RESPONSE_LEN (sizeof(RESPONSE) - 1)
#define HTTP_READ_BUF (16 * 1024)
#define BACKLOG 4096
#define RING_BYTES (64u << 20)
#define BGID 0

enum op { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_CANCEL = 4, OP_TIMEOUT = 5 };

struct opts {
	int port;
	bool http;
	size_t buf_size;
	int threads;
};

/* Growable byte buffer. */
struct buf {
	char *p;
	size_t len, cap;
};

struct conn {
	int fd;
	/* Bytes being sent (immutable while a send is in flight) and bytes queued behind them. */
	struct buf sending, pending;
	size_t sent;         /* bytes of `sending` already sent */
	bool send_inflight;
	bool recv_armed;
	bool paused;         /* receive cancelled until the output drains */
	bool peer_closed;    /* EOF: close once the output is sent */
	bool failed;         /* error: close as soon as no request is in flight */
	int scan_state;      /* bytes of \r\n\r\n matched at the end of the previous receive */
	size_t partial;      /* bytes of the current incomplete request */
};

struct worker {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	char *bufs;
	unsigned nbufs, buf_size;
	int listen_fd;
	const struct opts *o;
	size_t out_cap;
	unsigned long errors;
	struct __kernel_timespec backoff;
};

static void die(const char *what, int err)
{
	fprintf(stderr, "uring_server: %s: %s\n", what, strerror(err));
	exit(1);
}

static uint64_t ud(void *p, enum op op) { return (uint64_t)(uintptr_t)p | (uint64_t)op; }

static struct io_uring_sqe *sqe_get(struct worker *w)
{
	struct io_uring_sqe *s = io_uring_get_sqe(&w->ring);
	while (!s) {
		io_uring_submit(&w->ring);
		s = io_uring_get_sqe(&w->ring);
	}
	return s;
}

static int buf_append(struct buf *b, const char *data, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	return 0;
}

static void arm_accept(struct worker *w)
{
	struct io_uring_sqe *s = sqe_get(w);
	io_uring_prep_multishot_accept(s, w->listen_fd, NULL, NULL, 0);
	io_uring_sqe_set_data64(s, ud(w, OP_ACCEPT));
}

static void arm_recv(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *s = sqe_get(w);
	io_uring_prep_recv_multishot(s, c->fd, NULL, 0, 0);
	s->flags |= IOSQE_BUFFER_SELECT;
	s->buf_group = BGID;
	io_uring_sqe_set_data64(s, ud(c, OP_RECV));
	c->recv_armed = true;
}

static void start_send(struct worker *w, struct conn *c)
{
	if (c->send_inflight || c->failed)
		return;
	if (c->sent == c->sending.len) {
		/* Everything in `sending` went out: the queued bytes become the next send. */
		struct buf t = c->sending;
		c->sending = c->pending;
		c->pending = t;
		c->pending.len = 0;
		c->sent = 0;
	}
	if (c->sending.len == 0)
		return;
	struct io_uring_sqe *s = sqe_get(w);
	io_uring_prep_send(s, c->fd, c->sending.p + c->sent, c->sending.len - c->sent,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(s, ud(c, OP_SEND));
	c->send_inflight = true;
}

/* Frees the connection once nothing of it is in flight; returns true if it did. */
static bool maybe_close(struct conn *c)
{
	bool output_done = c->sent == c->sending.len && c->pending.len == 0;
	if (c->recv_armed || c->send_inflight)
		return false;
	if (!c->failed && !(c->peer_closed && output_done))
		return false;
	close(c->fd);
	free(c->sending.p);
	free(c->pending.p);
	free(c);
	return true;
}

/* Stops receiving on `c` (its receive completes with -ECANCELED). */
static void cancel_recv(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *s = sqe_get(w);
	io_uring_prep_cancel64(s, ud(c, OP_RECV), 0);
	io_uring_sqe_set_data64(s, ud(NULL, OP_CANCEL));
}

static void fail(struct worker *w, struct conn *c)
{
	if (!c->failed && c->recv_armed)
		cancel_recv(w, c);
	c->failed = true;
}

/* Counts requests (\r\n\r\n, left to right, no overlap) in one received piece. */
static size_t scan_requests(struct conn *c, const unsigned char *p, size_t n)
{
	static const unsigned char needle[4] = {'\r', '\n', '\r', '\n'};
	size_t count = 0, i = 0, last_end = 0;
	bool matched = false;
	int st = c->scan_state;
	while (i < n) {
		if (st == 0) {
			const unsigned char *q = memchr(p + i, '\r', n - i);
			if (!q)
				break;
			i = (size_t)(q - p);
		}
		unsigned char ch = p[i++];
		for (;;) {
			if (ch == needle[st]) {
				st++;
				break;
			}
			if (st == 0)
				break;
			/* Failure function of \r\n\r\n: after 3 matched bytes "\r\n\r", "\r" remains. */
			st = st == 3 ? 1 : 0;
		}
		if (st == 4) {
			count++;
			st = 0;
			last_end = i;
			matched = true;
		}
	}
	c->scan_state = st;
	c->partial = matched ? n - last_end : c->partial + n;
	return count;
}

static void on_data(struct worker *w, struct conn *c, const char *data, size_t n)
{
	int err = 0;
	if (w->o->http) {
		size_t k = scan_requests(c, (const unsigned char *)data, n);
		if (c->partial > HTTP_READ_BUF) {
			fail(w, c);
			return;
		}
		for (size_t i = 0; i < k && !err; i++)
			err = buf_append(&c->pending, RESPONSE, RESPONSE_LEN);
	} else {
		err = buf_append(&c->pending, data, n);
	}
	if (err) {
		fail(w, c);
		return;
	}
	if (!c->paused && c->pending.len + (c->sending.len - c->sent) > w->out_cap) {
		c->paused = true;
		if (c->recv_armed)
			cancel_recv(w, c);
	}
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more)
		c->recv_armed = false;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (cqe->res > 0 && !c->failed)
			on_data(w, c, w->bufs + (size_t)bid * w->buf_size, (size_t)cqe->res);
		io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->buf_size, w->buf_size, bid,
				      io_uring_buf_ring_mask(w->nbufs), 0);
		io_uring_buf_ring_advance(w->br, 1);
	}
	if (cqe->res == 0)
		c->peer_closed = true;
	else if (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -ECANCELED)
		c->failed = true;
	start_send(w, c);
	if (!c->recv_armed && !c->paused && !c->peer_closed && !c->failed)
		arm_recv(w, c); /* ran out of buffers, or the kernel ended the multishot */
	maybe_close(c);
}

static void on_send(struct worker *w, struct conn *c, int res)
{
	c->send_inflight = false;
	if (res < 0) {
		fail(w, c);
	} else {
		c->sent += (size_t)res;
		start_send(w, c);
		bool drained = !c->send_inflight && c->pending.len == 0;
		if (c->paused && drained && !c->failed && !c->peer_closed) {
			c->paused = false;
			if (!c->recv_armed)
				arm_recv(w, c);
		}
	}
	maybe_close(c);
}

static void on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		if (cqe->res < 0) {
			/* EMFILE and the like: retry after a pause, not in a hot loop. */
			struct io_uring_sqe *s = sqe_get(w);
			io_uring_prep_timeout(s, &w->backoff, 0, 0);
			io_uring_sqe_set_data64(s, ud(w, OP_TIMEOUT));
		} else {
			arm_accept(w);
		}
	}
	if (cqe->res < 0) {
		if (w->errors++ < 10)
			fprintf(stderr, "uring_server: accept: %s\n", strerror(-cqe->res));
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cqe->res);
		return;
	}
	c->fd = cqe->res;
	arm_recv(w, c);
}

static void setup_buffers(struct worker *w)
{
	w->buf_size = w->o->http ? HTTP_READ_BUF : (unsigned)w->o->buf_size;
	unsigned n = RING_BYTES / w->buf_size;
	if (n > 4096)
		n = 4096;
	if (n < 8)
		n = 8;
	while (n & (n - 1))
		n &= n - 1; /* round down to a power of two */
	w->nbufs = n;
	w->bufs = mmap(NULL, (size_t)n * w->buf_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (w->bufs == MAP_FAILED)
		die("mmap receive buffers", errno);
	size_t ring_bytes = n * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (mem == MAP_FAILED)
		die("mmap buffer ring", errno);
	w->br = mem;
	io_uring_buf_ring_init(w->br);
	struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)mem,
				       .ring_entries = n, .bgid = BGID};
	int r = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (r)
		die("register buffer ring", -r);
	for (unsigned i = 0; i < n; i++)
		io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * w->buf_size, w->buf_size, i,
				      io_uring_buf_ring_mask(n), (int)i);
	io_uring_buf_ring_advance(w->br, (int)n);
}

static int listener(const struct opts *o)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket", errno);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (o->threads > 1 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		die("SO_REUSEPORT", errno);
	/* Accepted sockets inherit TCP_NODELAY from the listener. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
		die("bind", errno);
	if (listen(fd, BACKLOG))
		die("listen", errno);
	return fd;
}

static void *serve(void *arg)
{
	struct worker *w = arg;
	struct io_uring_params p = {0};
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
	p.cq_entries = 16384;
	int r = io_uring_queue_init_params(4096, &w->ring, &p);
	if (r < 0) {
		/* Kernels before 6.1: no DEFER_TASKRUN. */
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 16384;
		r = io_uring_queue_init_params(4096, &w->ring, &p);
	}
	if (r < 0)
		die("io_uring_queue_init", -r);
	setup_buffers(w);
	w->out_cap = w->buf_size * 4 > 65536 ? w->buf_size * 4 : 65536;
	w->backoff.tv_nsec = 10 * 1000 * 1000;
	w->listen_fd = listener(w->o);
	arm_accept(w);
	for (;;) {
		r = io_uring_submit_and_wait(&w->ring, 1);
		if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
			die("io_uring_submit_and_wait", -r);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			seen++;
			uint64_t d = cqe->user_data;
			void *p = (void *)(uintptr_t)(d & ~(uint64_t)7);
			switch ((enum op)(d & 7)) {
			case OP_ACCEPT:
				on_accept(w, cqe);
				break;
			case OP_RECV:
				on_recv(w, p, cqe);
				break;
			case OP_SEND:
				on_send(w, p, cqe->res);
				break;
			case OP_TIMEOUT:
				arm_accept(w);
				break;
			case OP_CANCEL:
				break;
			}
		}
		io_uring_cq_advance(&w->ring, seen);
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: uring_server --port P --workload http|echo [--buf-size N] [--threads T]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = {.port = -1, .http = true, .buf_size = 16 * 1024, .threads = 1};
	bool have_workload = false;
	for (int i = 1; i < argc; i++) {
		const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		i++;
		if (!strcmp(k, "--port"))
			o.port = atoi(v);
		else if (!strcmp(k, "--workload")) {
			if (!strcmp(v, "http"))
				o.http = true;
			else if (!strcmp(v, "echo"))
				o.http = false;
			else
				usage();
			have_workload = true;
		} else if (!strcmp(k, "--buf-size"))
			o.buf_size = strtoul(v, NULL, 10);
		else if (!strcmp(k, "--threads"))
			o.threads = atoi(v);
		else
			usage();
	}
	if (o.port <= 0 || o.port > 65535 || !have_workload || o.threads < 1 ||
	    o.buf_size < 64 || o.buf_size > (64u << 20))
		usage();
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl)) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	pthread_t *t = calloc((size_t)o.threads, sizeof(*t));
	struct worker *w = calloc((size_t)o.threads, sizeof(*w));
	if (!t || !w)
		die("calloc", ENOMEM);
	for (int i = 0; i < o.threads; i++) {
		w[i].o = &o;
		if (pthread_create(&t[i], NULL, serve, &w[i]))
			die("pthread_create", errno);
	}
	for (int i = 0; i < o.threads; i++)
		pthread_join(t[i], NULL);
	return 0;
}
