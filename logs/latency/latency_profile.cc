#include "logs/latency/latency_profile.h"

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <utility>

namespace nrx::logs {
namespace {

constexpr std::array<std::string_view, kAccessClasses> kAccessNames = {
    "reserve", "write", "read", "tail_update", "payload_read", "ctail_read"};

constexpr size_t kMaxReplaySamples = size_t{16} << 20;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// A whole non-negative integer of ns. Errors name |what| and the text.
Result<uint64_t> parse_ns(std::string_view text, std::string_view what) {
  text = trim(text);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return Status::invalid_argument(std::string(what) + " '" + std::string(text) +
                                    "' is not a whole number of nanoseconds (>= 0)");
  }
  return v;
}

// A finite number >= 0 (mean and sd may have fractions).
Result<double> parse_real(std::string_view text, std::string_view what) {
  text = trim(text);
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v) || v < 0) {
    return Status::invalid_argument(std::string(what) + " '" + std::string(text) + "' is not a number >= 0");
  }
  return v;
}

// Splits "a:b:c" into its fields.
std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (;;) {
    const size_t at = s.find(sep);
    out.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return out;
    s.remove_prefix(at + 1);
  }
}

std::string format_ns(double ns) {
  char buf[32];
  if (ns == std::floor(ns) && ns < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", ns);
  } else {
    std::snprintf(buf, sizeof buf, "%g", ns);
  }
  return buf;
}

// The standard normal CDF's inverse at |p| (0 < p < 1), by bisection on erfc: slow but exact to
// ~1e-12, and run only when a Delay is made.
double inverse_normal_cdf(double p) {
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return (lo + hi) / 2;
}

}  // namespace

std::string_view access_name(Access a) { return kAccessNames[static_cast<size_t>(a)]; }

Result<Access> access_from_name(std::string_view name) {
  for (size_t i = 0; i < kAccessClasses; ++i) {
    if (kAccessNames[i] == name) return static_cast<Access>(i);
  }
  std::string known;
  for (std::string_view n : kAccessNames) known += (known.empty() ? "" : ", ") + std::string(n);
  return Status::invalid_argument("unknown access class '" + std::string(name) + "' (known: " + known + ")");
}

Result<Delay> Delay::fixed(uint64_t ns) {
  if (ns > kMaxNs) return Status::invalid_argument("delay of " + std::to_string(ns) + " ns is above the 10 s limit");
  Delay d;
  if (ns == 0) return d;  // a fixed zero is no delay at all: the decorator's fast path
  d.kind_ = Kind::kFixed;
  d.a_ = ns;
  d.mean_ns_ = static_cast<double>(ns);
  return d;
}

Result<Delay> Delay::uniform(uint64_t lo_ns, uint64_t hi_ns) {
  if (lo_ns > hi_ns) {
    return Status::invalid_argument("uniform delay range " + std::to_string(lo_ns) + ".." + std::to_string(hi_ns) +
                                    " ns is empty (low end above high end)");
  }
  if (hi_ns > kMaxNs) return Status::invalid_argument("uniform delay up to " + std::to_string(hi_ns) + " ns is above the 10 s limit");
  if (hi_ns == 0) return Delay{};
  Delay d;
  d.kind_ = Kind::kUniform;
  d.a_ = lo_ns;
  d.b_ = hi_ns;
  d.mean_ns_ = (static_cast<double>(lo_ns) + static_cast<double>(hi_ns)) / 2;
  return d;
}

Result<Delay> Delay::normal(double mean_ns, double sd_ns) {
  if (!std::isfinite(mean_ns) || !std::isfinite(sd_ns) || mean_ns < 0 || sd_ns < 0) {
    return Status::invalid_argument("normal delay needs a mean and a standard deviation >= 0");
  }
  if (mean_ns + 4 * sd_ns > static_cast<double>(kMaxNs)) {
    return Status::invalid_argument("normal delay reaches above the 10 s limit");
  }
  constexpr uint32_t n = 1u << kNormalTableBits;
  auto table = std::make_shared<std::vector<uint64_t>>(n);
  double sum = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const double z = inverse_normal_cdf((i + 0.5) / n);
    const double v = std::max(0.0, std::round(mean_ns + sd_ns * z));  // clamped at 0
    (*table)[i] = static_cast<uint64_t>(v);
    sum += v;
  }
  Delay d;
  d.kind_ = Kind::kNormal;
  d.mean_ns_ = sum / n;  // of the clamped, rounded table: exactly what draws average to
  d.normal_mean_ns_ = mean_ns;
  d.normal_sd_ns_ = sd_ns;
  d.table_ = std::move(table);
  if (d.mean_ns_ == 0) return Delay{};
  return d;
}

Result<Delay> Delay::replay(std::vector<uint64_t> samples_ns, std::string source) {
  if (samples_ns.empty()) return Status::invalid_argument("replay delay from " + source + " has no samples");
  if (samples_ns.size() > kMaxReplaySamples) {
    return Status::resource_exhausted("replay delay from " + source + " has more than 16 Mi samples");
  }
  double sum = 0;
  for (uint64_t v : samples_ns) {
    if (v > kMaxNs) {
      return Status::invalid_argument("replay sample of " + std::to_string(v) + " ns from " + source +
                                      " is above the 10 s limit");
    }
    sum += static_cast<double>(v);
  }
  Delay d;
  d.kind_ = Kind::kReplay;
  d.mean_ns_ = sum / static_cast<double>(samples_ns.size());
  d.source_ = std::move(source);
  d.table_ = std::make_shared<const std::vector<uint64_t>>(std::move(samples_ns));
  return d;
}

Result<Delay> Delay::replay_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::not_found("cannot open replay file '" + path + "'");
  std::vector<uint64_t> samples;
  std::string line;
  for (uint64_t number = 1; std::getline(in, line); ++number) {
    const std::string_view t = trim(line);
    if (t.empty() || t.front() == '#') continue;
    if (samples.size() == kMaxReplaySamples) {
      return Status::resource_exhausted("replay file '" + path + "' has more than 16 Mi values");
    }
    Result<uint64_t> v = parse_ns(t, "value");
    if (!v.ok()) {
      return Status::invalid_argument("replay file '" + path + "' line " + std::to_string(number) + ": " +
                                      v.status().message());
    }
    samples.push_back(*v);
  }
  if (samples.empty()) return Status::invalid_argument("replay file '" + path + "' holds no values");
  return replay(std::move(samples), path);
}

Result<Delay> Delay::parse(std::string_view spec) {
  spec = trim(spec);
  if (spec.empty()) return Status::invalid_argument("empty delay (want N, fixed:N, uniform:A:B, normal:M:SD or replay:FILE)");
  if (spec == "none") return Delay{};
  if (spec.rfind("replay:", 0) == 0) {
    const std::string path(trim(spec.substr(7)));
    if (path.empty()) return Status::invalid_argument("replay delay needs a file: replay:PATH");
    return replay_file(path);
  }
  const std::vector<std::string_view> f = split(spec, ':');
  const std::string_view kind = f[0];
  auto arity = [&](size_t want, const char* form) -> Status {
    if (f.size() != want) return Status::invalid_argument("delay '" + std::string(spec) + "' must look like " + form);
    return ok_status();
  };
  if (f.size() == 1) {  // a bare number: fixed
    NRX_ASSIGN_OR_RETURN(uint64_t ns, parse_ns(kind, "delay"));
    return fixed(ns);
  }
  if (kind == "fixed") {
    NRX_RETURN_IF_ERROR(arity(2, "fixed:N"));
    NRX_ASSIGN_OR_RETURN(uint64_t ns, parse_ns(f[1], "fixed delay"));
    return fixed(ns);
  }
  if (kind == "uniform") {
    NRX_RETURN_IF_ERROR(arity(3, "uniform:A:B"));
    NRX_ASSIGN_OR_RETURN(uint64_t lo, parse_ns(f[1], "uniform low end"));
    NRX_ASSIGN_OR_RETURN(uint64_t hi, parse_ns(f[2], "uniform high end"));
    return uniform(lo, hi);
  }
  if (kind == "normal") {
    NRX_RETURN_IF_ERROR(arity(3, "normal:MEAN:SD"));
    NRX_ASSIGN_OR_RETURN(double mean, parse_real(f[1], "normal mean"));
    NRX_ASSIGN_OR_RETURN(double sd, parse_real(f[2], "normal standard deviation"));
    return normal(mean, sd);
  }
  return Status::invalid_argument("unknown delay kind '" + std::string(kind) +
                                  "' (want N, fixed:N, uniform:A:B, normal:M:SD or replay:FILE)");
}

std::string Delay::spec() const {
  switch (kind_) {
    case Kind::kNone: return "none";
    case Kind::kFixed: return "fixed:" + std::to_string(a_);
    case Kind::kUniform: return "uniform:" + std::to_string(a_) + ":" + std::to_string(b_);
    case Kind::kNormal: return "normal:" + format_ns(normal_mean_ns_) + ":" + format_ns(normal_sd_ns_);
    case Kind::kReplay: return "replay:" + source_;
  }
  return "none";
}

Result<LatencyProfile> LatencyProfile::parse(std::string_view spec) {
  spec = trim(spec);
  if (spec.find('=') == std::string_view::npos) {
    NRX_ASSIGN_OR_RETURN(Delay d, Delay::parse(spec));
    return all(d);
  }
  LatencyProfile p;
  for (std::string_view item : split(spec, ',')) {
    item = trim(item);
    if (item.empty()) return Status::invalid_argument("empty item in latency profile '" + std::string(spec) + "'");
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return Status::invalid_argument("latency profile item '" + std::string(item) + "' must look like CLASS=DELAY");
    }
    const std::string_view name = trim(item.substr(0, eq));
    NRX_ASSIGN_OR_RETURN(Delay d, Delay::parse(item.substr(eq + 1)));
    if (name == "all") {
      p.delays.fill(d);
      continue;
    }
    NRX_ASSIGN_OR_RETURN(Access a, access_from_name(name));
    p[a] = d;
  }
  return p;
}

bool LatencyProfile::all_none() const {
  for (const Delay& d : delays) {
    if (!d.is_none()) return false;
  }
  return true;
}

std::string LatencyProfile::spec() const {
  if (all_none()) return "none";
  bool same = true;
  for (const Delay& d : delays) same = same && d.spec() == delays[0].spec();
  if (same) return delays[0].spec();
  std::string s;
  for (size_t i = 0; i < kAccessClasses; ++i) {
    if (delays[i].is_none()) continue;
    s += (s.empty() ? "" : ",") + std::string(kAccessNames[i]) + "=" + delays[i].spec();
  }
  return s;
}

DelayRng& thread_delay_rng(uint64_t seed) {
  // Counts threads that have drawn a delay; relaxed: it only has to hand out distinct numbers.
  static std::atomic<uint64_t> threads{0};
  thread_local DelayRng rng(0);
  thread_local bool seeded = false;
  if (!seeded) {
    rng = DelayRng(seed * 0x100000001b3ull + threads.fetch_add(1, std::memory_order_relaxed));
    seeded = true;
  }
  return rng;
}

}  // namespace nrx::logs
