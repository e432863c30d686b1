#include "tools/nrx/cli.h"

#include <charconv>
#include <cstdio>

namespace nrx::cli {

void Command::option(std::string name, std::string metavar, std::string help, std::string fallback) {
  order_.push_back(name);
  specs_[std::move(name)] = Spec{std::move(metavar), std::move(help), std::move(fallback)};
}

void Command::flag(std::string name, std::string help) {
  order_.push_back(name);
  specs_[std::move(name)] = Spec{"", std::move(help), ""};
}

Status Command::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      if (positional_metavar_.empty() || positional_.has_value() || a.rfind("-", 0) == 0) {
        return Status::invalid_argument("unexpected argument '" + a + "'");
      }
      positional_ = a;
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) return Status::invalid_argument("unknown option '--" + name + "'");
    if (it->second.metavar.empty()) {
      if (value) return Status::invalid_argument("option '--" + name + "' takes no value");
      values_[name] = "1";
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size()) return Status::invalid_argument("option '--" + name + "' needs a value");
      value = args[++i];
    }
    values_[name] = *value;
  }
  return ok_status();
}

std::optional<std::string> Command::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

Result<uint64_t> Command::get_u64(const std::string& name, uint64_t fallback, uint64_t lo, uint64_t hi) const {
  auto v = get(name);
  if (!v) return fallback;
  uint64_t out = 0;
  auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || end != v->data() + v->size() || v->empty()) {
    return Status::invalid_argument("--" + name + " expects a whole number, not '" + *v + "'");
  }
  if (out < lo || out > hi) {
    return Status::invalid_argument("--" + name + " must be between " + std::to_string(lo) + " and " +
                                    std::to_string(hi) + ", not " + *v);
  }
  return out;
}

std::string Command::usage() const {
  std::string s = "usage: nrx " + name_ + " [options]" +
                  (positional_metavar_.empty() ? "" : " " + positional_metavar_) + "\n\n" + summary_ + "\n\n";
  if (!positional_metavar_.empty()) {
    std::string left = "  " + positional_metavar_;
    if (left.size() < 28) left.resize(28, ' ');
    s += "arguments:\n" + left + positional_help_ + "\n\n";
  }
  s += "options:\n";
  for (const std::string& n : order_) {
    const Spec& sp = specs_.at(n);
    std::string left = "  --" + n + (sp.metavar.empty() ? "" : " " + sp.metavar);
    if (left.size() < 28) left.resize(28, ' ');
    else left += "\n" + std::string(28, ' ');
    s += left + sp.help;
    if (!sp.fallback.empty()) s += " (default: " + sp.fallback + ")";
    s += "\n";
  }
  s += "  -h, --help                show this help\n";
  return s;
}

void Command::positional_arg(std::string metavar, std::string help) {
  positional_metavar_ = std::move(metavar);
  positional_help_ = std::move(help);
}

int fail(const Command& cmd, const Status& status) {
  std::fprintf(stderr, "nrx %s: %s (see 'nrx %s --help')\n", cmd.name().c_str(), status.message().c_str(),
               cmd.name().c_str());
  return 2;
}

}  // namespace nrx::cli
