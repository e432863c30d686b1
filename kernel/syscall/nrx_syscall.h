/* nrx_syscall.h: the nrx system-call ABI (DESIGN 4, syscall), one C header for C and C++.
 *
 * What: the numbers, argument and result structs, flag values and error convention of the calls
 * that reach NR-FS. The same structs are executed in-process (nrx::syscall::execute(), C++) and
 * carried to other Linux processes by the shared-memory channel (kernel/syscall/channel.h, server;
 * kernel/syscall/libnrx.h, client). Like NrOS, the kernel keeps no descriptors and no offsets:
 * files are named by inode number, and I/O carries explicit offsets.
 *
 * Layout rules (invariants): every struct has fixed-width fields at fixed offsets, no pointers
 * and no implicit padding (static_asserted below in C++ and C11); a request's variable-length
 * arguments travel inline in a data buffer beside it, at fixed places:
 *   - the first path (path_len bytes, no terminating NUL) starts at data offset 0;
 *   - the second path or name (path2_len bytes) follows it, at data offset path_len;
 *   - pwrite's payload (length bytes) starts at data offset 0 (pwrite takes no path);
 *   - results (pread's bytes, readdir's records) are written at data offset 0, response.length
 *     bytes.
 * A buffer of NRX_DATA_CAPACITY bytes holds any request: one NRX_MAX_IO payload or two paths.
 *
 * Calls: the fields each one reads; every field it does not read must be 0 (EINVAL otherwise), so
 * later versions can give them meaning. result is the value on success, -errno on failure.
 *   number            reads                              result (>= 0)        also fills
 *   NRX_SYS_OPEN      path, flags, mode (07777)          the inode number
 *   NRX_SYS_CLOSE     ino                                0
 *   NRX_SYS_PREAD     ino, offset, length                bytes read           data, length
 *   NRX_SYS_PWRITE    ino, offset, length, data          bytes written
 *   NRX_SYS_MKDIR     path, mode (07777)                 0
 *   NRX_SYS_RMDIR     path                               0
 *   NRX_SYS_UNLINK    path                               0
 *   NRX_SYS_RENAME    path (from), path2 (to)            0
 *   NRX_SYS_READDIR   path, path2 (resume after this     entries returned     data (records),
 *                     name; empty: from the start)                            length, flags
 *   NRX_SYS_STAT      path                               0                    stat
 *   NRX_SYS_FSTAT     ino                                0                    stat
 *   NRX_SYS_TRUNCATE  ino, offset (the new size)         0
 *   NRX_SYS_FSYNC     ino                                0
 *   NRX_SYS_CHMOD     ino, mode (07777)                  0
 *   NRX_SYS_UTIMENS   ino, atime_ns, mtime_ns            0
 * The process and memory calls exist only for programs that run as nrx processes on kernel cores
 * (kernel/boot/kernel.h); through the channel and the plain in-process dispatcher they are ENOSYS:
 *   NRX_SYS_GETPID    -                                  the caller's pid
 *   NRX_SYS_EXIT      flags (the status, 0..255)         does not return to the program's next call
 *   NRX_SYS_MMAP      offset (vaddr), length, flags      0: fresh zeroed 4 KiB frames mapped at
 *                     (NRX_PROT_*)                          [vaddr, vaddr+length), readable
 *   NRX_SYS_MUNMAP    offset (vaddr), length             0: unmapped on every core (TLB shootdown)
 *   NRX_SYS_MPROTECT  offset (vaddr), length, flags      0: new rights, with a shootdown
 * vaddr and length are multiples of 4096, length > 0, the range inside the user half [0, 2^47).
 * pread/pwrite move at most NRX_MAX_IO bytes per request (longer lengths are clamped: the result
 * says how many moved; libnrx loops). A zero-length pwrite writes nothing and returns 0 (after
 * checking the inode, as POSIX allows). Paths are absolute, at most NRX_PATH_MAX bytes, components
 * of 1..NRX_NAME_MAX bytes; "." and ".." are resolved, never above the root (EINVAL).
 *
 * Errors (result = -errno, Linux values): ENOSYS (unknown number), EINVAL (bad flags or mode, a
 * non-zero unused or reserved field, a relative path, a NUL inside a path, ".." above the root,
 * offset or size beyond INT64_MAX, a negative time), EFAULT (a path or payload reaching past the data buffer),
 * ENAMETOOLONG, ENOENT (also an empty path), EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EBADF (an inode
 * that does not exist), ENOSPC, EFBIG; for the memory calls EEXIST (mmap over a mapped page),
 * ENOMEM (no frames left), ENOENT (munmap/mprotect of a range with an unmapped page: nothing
 * changes), EACCES (mprotect making a per-replica copy of read-only code or data writable);
 * ESRCH from any call of a process that is being stopped (its exit has begun). Through
 * the channel also ECONNRESET (the server stopped or died), ETIMEDOUT (no answer within the client's timeout), EPROTO (a malformed answer).
 *
 * Thread safety: plain data; see the C++ and client APIs for who may touch what.
 *
 *   struct nrx_request req = {0};
 *   req.sysno = NRX_SYS_OPEN;
 *   req.flags = NRX_O_CREAT | NRX_O_RDWR;  req.mode = 0644;
 *   req.path_len = 6;  memcpy(data, "/hello", 6);
 *   // execute (in-process) or send (libnrx's nrx_syscall()); response.result is the inode or -errno
 */
#ifndef NRX_KERNEL_SYSCALL_NRX_SYSCALL_H_
#define NRX_KERNEL_SYSCALL_NRX_SYSCALL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any change to the numbers, structs or the channel layout. */
#define NRX_ABI_VERSION 2u

/* System-call numbers (nrx_request.sysno). 0 is never valid. */
#define NRX_SYS_OPEN 1u
#define NRX_SYS_CLOSE 2u
#define NRX_SYS_PREAD 3u
#define NRX_SYS_PWRITE 4u
#define NRX_SYS_MKDIR 5u
#define NRX_SYS_RMDIR 6u
#define NRX_SYS_UNLINK 7u
#define NRX_SYS_RENAME 8u
#define NRX_SYS_READDIR 9u
#define NRX_SYS_STAT 10u
#define NRX_SYS_FSTAT 11u
#define NRX_SYS_TRUNCATE 12u
#define NRX_SYS_FSYNC 13u
#define NRX_SYS_CHMOD 14u
#define NRX_SYS_UTIMENS 15u
#define NRX_SYS_GETPID 16u
#define NRX_SYS_EXIT 17u
#define NRX_SYS_MMAP 18u
#define NRX_SYS_MUNMAP 19u
#define NRX_SYS_MPROTECT 20u
#define NRX_SYS_COUNT 21u /* one past the last number */

/* mmap/mprotect rights (nrx_request.flags); every mapping is readable. */
#define NRX_PROT_WRITE 0x1u
#define NRX_PROT_EXEC 0x2u
#define NRX_PROT_ALL (NRX_PROT_WRITE | NRX_PROT_EXEC)

/* open() flags (nrx_request.flags). The access mode is the low two bits, as in POSIX. In the
 * kernel: any write access is fs::kWrite, NRX_O_CREAT fs::kCreate, NRX_O_EXCL fs::kExclusive,
 * NRX_O_TRUNC fs::kTruncate, NRX_O_DIRECTORY fs::kDirectory. NRX_O_APPEND is accepted and has
 * no kernel meaning: offsets live in the client (libnrx writes at the end of the file). */
#define NRX_O_RDONLY 0x0000u
#define NRX_O_WRONLY 0x0001u
#define NRX_O_RDWR 0x0002u
#define NRX_O_ACCMODE 0x0003u
#define NRX_O_CREAT 0x0100u
#define NRX_O_EXCL 0x0200u
#define NRX_O_TRUNC 0x0400u
#define NRX_O_APPEND 0x0800u
#define NRX_O_DIRECTORY 0x1000u
#define NRX_O_ALL (NRX_O_ACCMODE | NRX_O_CREAT | NRX_O_EXCL | NRX_O_TRUNC | NRX_O_APPEND | NRX_O_DIRECTORY)

/* Permission bits a mode may carry. */
#define NRX_MODE_MASK 07777u

/* Limits (equal to nrx::fs::kNameMax, kPathMax, kMaxIo; checked in syscalls.cc). */
#define NRX_NAME_MAX 255u
#define NRX_PATH_MAX 4096u
#define NRX_MAX_IO (128u * 1024u)
/* Bytes of a request's data buffer: one NRX_MAX_IO payload plus two paths. */
#define NRX_DATA_CAPACITY (NRX_MAX_IO + 2u * NRX_PATH_MAX)

/* File types (nrx_statbuf.type, nrx_dirent_record.type); equal to nrx::fs::FileType. */
#define NRX_DT_REG 1u
#define NRX_DT_DIR 2u

/* utimens: leave this time as it is / set it to the current time (like UTIME_OMIT, UTIME_NOW). */
#define NRX_UTIME_OMIT INT64_MIN
#define NRX_UTIME_NOW (INT64_MIN + 1)

/* nrx_response.flags of readdir: entries remain after the last one returned (ask again with
 * path2 = that entry's name). */
#define NRX_READDIR_MORE 0x1u

struct nrx_statbuf {
  uint64_t ino;
  uint32_t type;     /* NRX_DT_REG or NRX_DT_DIR */
  uint32_t mode;     /* permission bits (07777) */
  uint32_t nlink;    /* files 1; directories 2 + subdirectories */
  uint32_t reserved; /* 0 */
  uint64_t size;     /* bytes (directories: entry count) */
  uint64_t blocks;   /* 4 KiB frames allocated */
  int64_t atime_ns;  /* nanoseconds since the epoch */
  int64_t mtime_ns;
  int64_t ctime_ns;
};

struct nrx_request {
  uint32_t sysno;     /* NRX_SYS_* */
  uint32_t flags;     /* open: NRX_O_* */
  uint32_t mode;      /* open, mkdir, chmod: permission bits */
  uint32_t path_len;  /* bytes of the first path, at data offset 0 */
  uint32_t path2_len; /* bytes of the second path (rename) or name (readdir), after the first */
  uint32_t reserved;  /* 0 */
  uint64_t ino;       /* the inode-addressed calls */
  uint64_t offset;    /* pread, pwrite: file offset; truncate: the new size (<= INT64_MAX) */
  uint64_t length;    /* pread: bytes wanted; pwrite: payload bytes at data offset 0 */
  int64_t atime_ns;   /* utimens: >= 0 ns since the epoch, or NRX_UTIME_OMIT, NRX_UTIME_NOW */
  int64_t mtime_ns;
};

struct nrx_response {
  int64_t result;   /* >= 0: the call's value (table above); < 0: -errno */
  uint32_t length;  /* bytes of result data at data offset 0 (pread, readdir) */
  uint32_t flags;   /* readdir: NRX_READDIR_MORE */
  struct nrx_statbuf stat; /* stat, fstat */
};

/* One readdir entry in the data buffer; records follow each other, each record_len bytes (a
 * multiple of 8, at least sizeof(struct nrx_dirent_record) + name_len). Entries come sorted by
 * name (bytewise), without "." and "..". */
struct nrx_dirent_record {
  uint64_t ino;
  uint32_t type;       /* NRX_DT_REG or NRX_DT_DIR */
  uint16_t name_len;   /* 1..NRX_NAME_MAX bytes of name follow the record, no NUL */
  uint16_t record_len; /* bytes from this record to the next */
};

#ifdef __cplusplus
}  /* extern "C" */
#define NRX_ABI_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#define NRX_ABI_ALIGNOF(type) alignof(type)
#else
#define NRX_ABI_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#define NRX_ABI_ALIGNOF(type) _Alignof(type)
#endif

/* The layout is the ABI: pinned here so no compiler or flag can move a field. */
NRX_ABI_STATIC_ASSERT(sizeof(struct nrx_statbuf) == 64, "nrx_statbuf layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_statbuf, type) == 8, "nrx_statbuf layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_statbuf, size) == 24, "nrx_statbuf layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_statbuf, atime_ns) == 40, "nrx_statbuf layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_statbuf, ctime_ns) == 56, "nrx_statbuf layout");
NRX_ABI_STATIC_ASSERT(sizeof(struct nrx_request) == 64, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, path_len) == 12, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, path2_len) == 16, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, ino) == 24, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, offset) == 32, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, length) == 40, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, atime_ns) == 48, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_request, mtime_ns) == 56, "nrx_request layout");
NRX_ABI_STATIC_ASSERT(sizeof(struct nrx_response) == 80, "nrx_response layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_response, length) == 8, "nrx_response layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_response, stat) == 16, "nrx_response layout");
NRX_ABI_STATIC_ASSERT(sizeof(struct nrx_dirent_record) == 16, "nrx_dirent_record layout");
NRX_ABI_STATIC_ASSERT(offsetof(struct nrx_dirent_record, name_len) == 12, "nrx_dirent_record layout");
NRX_ABI_STATIC_ASSERT(NRX_ABI_ALIGNOF(struct nrx_request) == 8, "nrx_request alignment");
NRX_ABI_STATIC_ASSERT(NRX_ABI_ALIGNOF(struct nrx_response) == 8, "nrx_response alignment");
NRX_ABI_STATIC_ASSERT(NRX_DATA_CAPACITY == 139264u, "data buffer size");

#endif /* NRX_KERNEL_SYSCALL_NRX_SYSCALL_H_ */
