// The nrx command line: one parser for every subcommand, so each gets the same --help layout,
// `--name value` / `--name=value` forms, and one-line errors for bad input (STYLE.md: input from
// outside is validated at the boundary, never asserted).
//
//   cli::Command cmd("boot", "Boot the kernel and run the demo workload.");
//   cmd.flag("json", "Print the summary as JSON");
//   cmd.option("nodes", "N", "NUMA nodes to emulate", "detected");
//   if (auto st = cmd.parse(args); !st.ok()) return cli::fail(cmd, st);
//   uint64_t n = cmd.get_u64("nodes", 1, 64).value();
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace nrx::cli {

class Command {
 public:
  Command(std::string name, std::string summary) : name_(std::move(name)), summary_(std::move(summary)) {}

  // Declares --|name| taking a value, shown as |metavar|; |fallback| is printed as the default.
  void option(std::string name, std::string metavar, std::string help, std::string fallback = "");
  // Declares a boolean --|name|.
  void flag(std::string name, std::string help);
  // Declares the command's one positional argument, shown as |metavar| (e.g. WORKLOAD, DIR).
  // Whether it is required is the command's call: positional() is empty when it was not given.
  void positional_arg(std::string metavar, std::string help);

  // Parses |args| (without the program and command names). Sets help_requested() on -h/--help.
  // Errors: kInvalidArgument for an unknown option, a missing value, a value given to a flag, or
  // a positional argument the command does not declare (or a second one).
  Status parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_; }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  bool flag_set(const std::string& name) const { return has(name); }
  std::optional<std::string> get(const std::string& name) const;
  const std::optional<std::string>& positional() const { return positional_; }
  // The option as an integer in [lo, hi], or |fallback| when it was not given.
  // Errors: kInvalidArgument (not a number, out of range), naming the option.
  Result<uint64_t> get_u64(const std::string& name, uint64_t fallback, uint64_t lo, uint64_t hi) const;

  std::string usage() const;
  const std::string& name() const { return name_; }

 private:
  struct Spec {
    std::string metavar;  // empty for flags
    std::string help;
    std::string fallback;
  };
  std::string name_;
  std::string summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::string positional_metavar_;  // empty: none declared
  std::string positional_help_;
  std::optional<std::string> positional_;
  bool help_ = false;
};

// Prints "nrx <cmd>: <message> (see 'nrx <cmd> --help')" to stderr and returns exit code 2.
int fail(const Command& cmd, const Status& status);

}  // namespace nrx::cli
