// nrx::cli::Command, the one parser behind every nrx command: options with values (both spellings),
// flags, the declared positional argument, help, and each kind of bad input.
#include "tools/nrx/cli.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace nrx::cli {
namespace {

Command make(bool with_positional) {
  Command cmd("test run", "A command for the test.");
  if (with_positional) cmd.positional_arg("WORKLOAD", "what to run");
  cmd.option("seconds", "S", "how long", "3");
  cmd.flag("json", "JSON output");
  return cmd;
}

TEST(CliCommand, ParsesOptionsFlagsAndThePositional) {
  Command cmd = make(true);
  ASSERT_TRUE(cmd.parse({"--seconds", "5", "kv", "--json"}).ok());
  EXPECT_EQ(cmd.get("seconds"), std::optional<std::string>("5"));
  EXPECT_TRUE(cmd.flag_set("json"));
  EXPECT_EQ(cmd.positional(), std::optional<std::string>("kv"));

  Command eq = make(true);
  ASSERT_TRUE(eq.parse({"kv", "--seconds=7"}).ok());
  EXPECT_EQ(eq.get("seconds"), std::optional<std::string>("7"));
  EXPECT_EQ(eq.positional(), std::optional<std::string>("kv"));

  Command none = make(true);
  ASSERT_TRUE(none.parse({"--seconds", "kv"}).ok()) << "an option's value is never the positional";
  EXPECT_FALSE(none.positional().has_value());
  EXPECT_FALSE(none.flag_set("json"));
}

TEST(CliCommand, RefusesWhatItDoesNotDeclare) {
  const std::vector<std::vector<std::string>> bad = {{"--nope"}, {"--json=1"}, {"--seconds"}, {"kv", "fs"}, {"-x"}};
  for (const auto& args : bad) {
    Command cmd = make(true);
    Status st = cmd.parse(args);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << args.back();
  }
  Command plain = make(false);
  Status st = plain.parse({"kv"});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << "no positional declared";
  EXPECT_NE(st.message().find("'kv'"), std::string::npos) << st.to_string();
}

TEST(CliCommand, UsageShowsThePositionalAndEveryOption) {
  Command cmd = make(true);
  ASSERT_TRUE(cmd.parse({"--help"}).ok());
  EXPECT_TRUE(cmd.help_requested());
  const std::string u = cmd.usage();
  EXPECT_NE(u.find("usage: nrx test run [options] WORKLOAD"), std::string::npos) << u;
  EXPECT_NE(u.find("what to run"), std::string::npos) << u;
  EXPECT_NE(u.find("--seconds S"), std::string::npos) << u;
  EXPECT_NE(u.find("(default: 3)"), std::string::npos) << u;
  EXPECT_NE(u.find("--json"), std::string::npos) << u;
  EXPECT_EQ(make(false).usage().find("arguments:"), std::string::npos);
}

}  // namespace
}  // namespace nrx::cli
