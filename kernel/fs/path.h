// NR-FS path handling: the one place paths from outside are checked (STYLE: validate at the
// boundary). A path is absolute, at most kPathMax bytes, without NUL bytes; its components are
// 1..kNameMax bytes; "." is dropped and ".." removes the previous component, never above the root.
//
// Thread safety: pure functions.
//
//   auto parts = fs::split_path("/a/./b/../c");   // {"a", "c"}
//   std::string p = fs::join_path(*parts);         // "/a/c"
//   fs::split_path("/..").status().posix_errno();  // EINVAL
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace nrx::fs {

// A Status with |err| and the canonical code that matches it (ENOENT kNotFound, EEXIST
// kAlreadyExists, ENOTDIR/EISDIR/ENOTEMPTY kFailedPrecondition, EBADF kNotFound, EINVAL and
// ENAMETOOLONG kInvalidArgument, ENOSPC kResourceExhausted, EFBIG kOutOfRange).
Status fs_error(int err, std::string message);

// The normalised components of |path|. Errors: EINVAL (empty, relative, NUL byte, ".." above the
// root), ENAMETOOLONG (path over kPathMax or a component over kNameMax).
Result<std::vector<std::string_view>> split_path(std::string_view path);

// "/" + components joined by '/'.
std::string join_path(const std::vector<std::string_view>& parts);

// The last component as written (before normalisation): "." and ".." name no entry of their own.
std::string_view last_raw_component(std::string_view path);

}  // namespace nrx::fs
