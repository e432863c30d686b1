// nrx::Status and nrx::Result<T>: the error vocabulary of every subsystem.
//
// The codes are Abseil's canonical set, which maps one-to-one onto gRPC status codes, so the
// cluster layer can pass them through unchanged. No exceptions are thrown on any kernel or data
// path: functions return a [[nodiscard]] Status, or a Result<T> holding either a value or a
// non-OK Status. Result<T> is a small stand-in for std::expected, which clang 14 cannot use with
// libstdc++ 12 (the `clang` preset needs it).
//
// Thread safety: values, no shared state.
//
//   nrx::Result<int> parse(std::string_view s) {
//     if (s.empty()) return nrx::Status::invalid_argument("empty number");
//     return 42;
//   }
//   if (auto r = parse(x); !r.ok()) std::puts(r.status().to_string().c_str());
#pragma once

#include <cstdint>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "base/check.h"

namespace nrx {

enum class StatusCode : uint8_t {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }
  static Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status already_exists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
  static Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
  static Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status deadline_exceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
  static Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  static Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: entry of 200 bytes exceeds the slot's 64".
  std::string to_string() const;

  // A POSIX errno refining the canonical code, or 0 (NR-FS: kFailedPrecondition is ENOTDIR,
  // EISDIR or ENOTEMPTY; kNotFound is ENOENT or EBADF). Set with with_errno().
  int posix_errno() const { return errno_; }
  Status with_errno(int e) && {
    errno_ = e;
    return std::move(*this);
  }

  // Explicitly drops a status the caller has decided it does not need.
  void ignore_error() const {}

  friend bool operator==(const Status& a, const Status& b) { return a.code_ == b.code_ && a.message_ == b.message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  int errno_ = 0;
  std::string message_;
};

inline Status ok_status() { return {}; }

// A value of T or a non-OK Status. Constructing a Result from an OK status is a bug
// (NRX_CHECK), because the caller would then read a value that does not exist.
template <typename T>
class [[nodiscard]] Result {
 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit, like std::expected.
  Result(T value) : has_value_(true) { new (&value_) T(std::move(value)); }
  // NOLINTNEXTLINE(google-explicit-constructor)
  Result(Status status) : has_value_(false), status_(std::move(status)) {
    NRX_CHECK(!status_.ok(), "Result constructed from an OK status without a value");
  }
  Result(const Result& other) : has_value_(other.has_value_), status_(other.status_) {
    if (has_value_) new (&value_) T(other.value_);
  }
  Result(Result&& other) noexcept : has_value_(other.has_value_), status_(std::move(other.status_)) {
    if (has_value_) new (&value_) T(std::move(other.value_));
  }
  Result& operator=(Result other) noexcept {
    destroy();
    has_value_ = other.has_value_;
    status_ = std::move(other.status_);
    if (has_value_) new (&value_) T(std::move(other.value_));
    return *this;
  }
  ~Result() { destroy(); }

  bool ok() const { return has_value_; }
  explicit operator bool() const { return has_value_; }
  // The error; OK when the Result holds a value.
  const Status& status() const { return status_; }

  T& value() & { NRX_CHECK(has_value_, status_.to_string().c_str()); return value_; }
  const T& value() const& { NRX_CHECK(has_value_, status_.to_string().c_str()); return value_; }
  T&& value() && { NRX_CHECK(has_value_, status_.to_string().c_str()); return std::move(value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  template <typename U>
  T value_or(U&& fallback) const& { return has_value_ ? value_ : static_cast<T>(std::forward<U>(fallback)); }

 private:
  void destroy() {
    if (has_value_) value_.~T();
    has_value_ = false;
  }
  bool has_value_;
  Status status_;
  union { T value_; };
};

}  // namespace nrx

// Returns the status of |expr| from the enclosing function when it is not OK.
// Variadic so that template arguments with commas need no extra parentheses.
#define NRX_RETURN_IF_ERROR(...)                                                          \
  do {                                                                                    \
    if (::nrx::Status nrx_status_ = (__VA_ARGS__); !nrx_status_.ok()) return nrx_status_; \
  } while (0)

#define NRX_CONCAT_INNER_(a, b) a##b
#define NRX_CONCAT_(a, b) NRX_CONCAT_INNER_(a, b)
// NRX_ASSIGN_OR_RETURN(auto x, make()) : declares x from a Result or returns its status.
#define NRX_ASSIGN_OR_RETURN(decl, ...)                                   \
  auto NRX_CONCAT_(nrx_result_, __LINE__) = (__VA_ARGS__);                \
  if (!NRX_CONCAT_(nrx_result_, __LINE__).ok())                           \
    return NRX_CONCAT_(nrx_result_, __LINE__).status();                   \
  decl = std::move(NRX_CONCAT_(nrx_result_, __LINE__)).value()
