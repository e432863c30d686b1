#include "kernel/fs/path.h"

#include "kernel/fs/fs.h"

namespace nrx::fs {

Status fs_error(int err, std::string message) {
  StatusCode code = StatusCode::kInternal;
  switch (err) {
    case ENOENT:
    case EBADF: code = StatusCode::kNotFound; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY: code = StatusCode::kFailedPrecondition; break;
    case EINVAL:
    case ENAMETOOLONG: code = StatusCode::kInvalidArgument; break;
    case ENOSPC: code = StatusCode::kResourceExhausted; break;
    case EFBIG: code = StatusCode::kOutOfRange; break;
    default: break;
  }
  return Status(code, std::move(message)).with_errno(err);
}

int to_errno(const Status& status) {
  if (status.ok()) return 0;
  if (status.posix_errno() != 0) return status.posix_errno();
  switch (status.code()) {
    case StatusCode::kNotFound: return ENOENT;
    case StatusCode::kAlreadyExists: return EEXIST;
    case StatusCode::kInvalidArgument: return EINVAL;
    case StatusCode::kResourceExhausted: return ENOSPC;
    case StatusCode::kOutOfRange: return EFBIG;
    case StatusCode::kPermissionDenied: return EACCES;
    case StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case StatusCode::kUnavailable: return EAGAIN;
    default: return EIO;
  }
}

Result<std::vector<std::string_view>> split_path(std::string_view path) {
  if (path.empty()) return fs_error(EINVAL, "empty path");
  if (path.size() > kPathMax) return fs_error(ENAMETOOLONG, "path longer than 4096 bytes");
  if (path.front() != '/') return fs_error(EINVAL, "path is not absolute");
  if (path.find('\0') != std::string_view::npos) return fs_error(EINVAL, "path contains a NUL byte");
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t j = i;
    while (j < path.size() && path[j] != '/') ++j;
    std::string_view part = path.substr(i, j - i);
    i = j;
    if (part.empty() || part == ".") continue;
    if (part.size() > kNameMax) return fs_error(ENAMETOOLONG, "a path component is longer than 255 bytes");
    if (part == "..") {
      if (parts.empty()) return fs_error(EINVAL, "'..' climbs above the root");
      parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  return parts;
}

std::string join_path(const std::vector<std::string_view>& parts) {
  if (parts.empty()) return "/";
  std::string s;
  for (std::string_view p : parts) {
    s += '/';
    s += p;
  }
  return s;
}

std::string_view last_raw_component(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace nrx::fs
