/* libnrx.h: the client library of the nrx syscall channel, a POSIX-like C API (C and C++).
 *
 * What: a process connects to a ChannelServer's shared-memory channel (kernel/syscall/channel.h)
 * and calls NR-FS through it. Built twice from one source: the static library nrx::libnrx and the
 * shared library libnrx.so (C linkage; only the nrx_* functions are exported).
 *
 * Descriptors and offsets live here, on the client side, as in NrOS: the kernel names files by
 * inode. nrx_open() returns a small descriptor (the lowest free, from 0) bound to the inode and an
 * offset; nrx_read/nrx_write/nrx_lseek move that offset on top of the kernel's pread/pwrite.
 * Transfers longer than NRX_MAX_IO are split into several requests here (a short count means the
 * end of the file, or an error after some bytes moved, as POSIX read/write do).
 *
 * Return convention: every call returns a non-negative value on success and -errno on failure
 * (-ENOENT, not -1 with errno set); errno is left alone. Errors beyond the ABI's (nrx_syscall.h):
 *   -ENOTCONN      no nrx_connect() yet;
 *   -EBADF         a descriptor that is not open (or not open for the access asked);
 *   -EMFILE        NRX_MAX_FDS descriptors open;
 *   -ECONNRESET    the server stopped, or its process is gone (found within ~50 ms);
 *   -ETIMEDOUT     no answer within the timeout (nrx_set_timeout_ms; 60 s by default, or the
 *                  environment variable NRX_TIMEOUT_MS read by nrx_connect);
 *   -EPROTO        a malformed answer.
 * nrx_connect's errors: -EINVAL (null or empty path), -EISCONN (already connected), -ENOENT (no
 * channel file), the OS's errors opening or mapping it, -EPROTO (not a channel: truncated, bad
 * magic, bad checksum, inconsistent geometry), -EPROTONOSUPPORT (another ABI version),
 * -ECONNREFUSED (the server that made the file is not running). nrx_last_error() then says which,
 * in words.
 *
 * Thread safety: every call may be made from any thread; each request claims its own channel slot
 * (up to the channel's slot count in flight at once, then callers wait for a free slot).
 * nrx_read/nrx_write/nrx_lseek on one descriptor are serialised (the offset moves atomically);
 * NRX_O_APPEND writes are not atomic against other writers of the file. nrx_disconnect() waits for
 * calls in flight and closes every descriptor.
 *
 *   if (nrx_connect("/dev/shm/nrx") < 0) { fprintf(stderr, "%s\n", nrx_last_error()); return 1; }
 *   int fd = nrx_open("/hello.txt", NRX_O_CREAT | NRX_O_RDWR, 0644);
 *   nrx_write(fd, "hi", 2);
 *   nrx_lseek(fd, 0, NRX_SEEK_SET);  char buf[2];  nrx_read(fd, buf, 2);
 *   nrx_close(fd);  nrx_disconnect();
 */
#ifndef NRX_KERNEL_SYSCALL_LIBNRX_H_
#define NRX_KERNEL_SYSCALL_LIBNRX_H_

#include <stddef.h>
#include <stdint.h>

#include "kernel/syscall/nrx_syscall.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define NRX_API __attribute__((visibility("default")))
#else
#define NRX_API
#endif

#define NRX_MAX_FDS 65536
#define NRX_SEEK_SET 0
#define NRX_SEEK_CUR 1
#define NRX_SEEK_END 2

/* One directory entry as nrx_readdir returns it. */
struct nrx_dirent {
  uint64_t ino;
  uint32_t type;                 /* NRX_DT_REG or NRX_DT_DIR */
  char name[NRX_NAME_MAX + 1];   /* NUL-terminated */
};

/* Maps the channel at |channel_path| (one connection per process). 0 or -errno (above). */
NRX_API int nrx_connect(const char* channel_path);
/* Unmaps it and closes every descriptor. 0, or -ENOTCONN. */
NRX_API int nrx_disconnect(void);
/* The last nrx_connect failure in words ("" if none); valid until the next nrx_connect. */
NRX_API const char* nrx_last_error(void);
/* Sets the per-request timeout (ms, > 0); returns the previous one. */
NRX_API uint32_t nrx_set_timeout_ms(uint32_t timeout_ms);

/* |mode| is used with NRX_O_CREAT (bits outside 07777 are ignored, as POSIX's umask-free open). */
NRX_API int nrx_open(const char* path, uint32_t flags, uint32_t mode);
NRX_API int nrx_close(int fd);
/* Bytes read (0 at the end), or -errno. -EBADF if not open for reading (NRX_O_WRONLY). */
NRX_API int64_t nrx_read(int fd, void* buf, size_t count);
/* Bytes written, or -errno (-EBADF if opened NRX_O_RDONLY). count == 0 returns 0. */
NRX_API int64_t nrx_write(int fd, const void* buf, size_t count);
/* The new offset, or -EINVAL (negative result, bad whence), -EBADF. */
NRX_API int64_t nrx_lseek(int fd, int64_t offset, int whence);
NRX_API int64_t nrx_pread(int fd, void* buf, size_t count, int64_t offset);
NRX_API int64_t nrx_pwrite(int fd, const void* buf, size_t count, int64_t offset);
NRX_API int nrx_mkdir(const char* path, uint32_t mode);
NRX_API int nrx_rmdir(const char* path);
NRX_API int nrx_unlink(const char* path);
NRX_API int nrx_rename(const char* from, const char* to);
NRX_API int nrx_stat(const char* path, struct nrx_statbuf* st);
NRX_API int nrx_fstat(int fd, struct nrx_statbuf* st);
NRX_API int nrx_ftruncate(int fd, int64_t size);
NRX_API int nrx_fsync(int fd);
NRX_API int nrx_fchmod(int fd, uint32_t mode);
NRX_API int nrx_futimens(int fd, int64_t atime_ns, int64_t mtime_ns);
/* Fills up to |max_entries| entries of directory |path| whose names sort after |after| (NULL or
 * "": from the first); returns how many (0: no more), or -errno. To list a large directory, call
 * again with after = the last name returned. */
NRX_API int nrx_readdir(const char* path, const char* after, struct nrx_dirent* entries, int max_entries);

/* The raw ABI: sends |request| with |in_len| bytes of inline data (paths and payload, laid out as
 * nrx_syscall.h says; at most NRX_DATA_CAPACITY, else -EINVAL), and copies the response and its
 * data (response->length bytes) back into |out|. Returns response->result, or a channel error as
 * -errno with *response zeroed but for result (-EPROTO when the data would not fit |out_cap|: the
 * call itself was executed). For tools and tests; the calls above are built on it. */
NRX_API int64_t nrx_syscall(const struct nrx_request* request, const void* in, size_t in_len,
                            struct nrx_response* response, void* out, size_t out_cap);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* NRX_KERNEL_SYSCALL_LIBNRX_H_ */
