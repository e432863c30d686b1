// transport/verbs on a machine without RDMA hardware: the endpoint's text form (what the control
// plane carries) round-trips and refuses malformed input; opening a device fails with the errors a
// user can act on. Real verbs (queue pairs, WRITE/READ/atomics) run between QEMU guests under
// soft-RoCE: tests/cluster/rxe_test.sh.
#include "transport/verbs/verbs.h"

#include <gtest/gtest.h>

#include <string>

namespace nrx::transport::verbs {
namespace {

TEST(VerbsEndpoint, TextRoundTrips) {
  Endpoint e;
  e.qp_num = 17;
  e.psn = 0xabcdef;
  e.lid = 3;
  for (int i = 0; i < 16; ++i) e.gid[i] = static_cast<uint8_t>(0xf0 + i);
  e.addr = 0x7f0012345000;
  e.rkey = 0x1234;
  e.length = 4096;
  const std::string text = e.to_string();
  auto back = Endpoint::parse(text);
  ASSERT_TRUE(back.ok()) << back.status().to_string() << " " << text;
  EXPECT_EQ(back->qp_num, e.qp_num);
  EXPECT_EQ(back->psn, e.psn);
  EXPECT_EQ(back->lid, e.lid);
  EXPECT_EQ(back->gid, e.gid);
  EXPECT_EQ(back->addr, e.addr);
  EXPECT_EQ(back->rkey, e.rkey);
  EXPECT_EQ(back->length, e.length);
  EXPECT_TRUE(Endpoint::parse(text + "\n").ok()) << "a received line keeps its newline";
}

TEST(VerbsEndpoint, MalformedTextIsRefused) {
  const std::string good = Endpoint{}.to_string();
  const std::string bad[] = {
      "",
      "qpn=1",
      "xqpn=1 psn=0 lid=0 gid=00000000000000000000000000000000 addr=0 rkey=0 len=0",
      "qpn=1 psn=16777216 lid=0 gid=00000000000000000000000000000000 addr=0 rkey=0 len=0",  // > 24 bits
      "qpn=1 psn=0 lid=70000 gid=00000000000000000000000000000000 addr=0 rkey=0 len=0",
      "qpn=1 psn=0 lid=0 gid=0000 addr=0 rkey=0 len=0",
      "qpn=1 psn=0 lid=0 gid=zz000000000000000000000000000000 addr=0 rkey=0 len=0",
      "qpn=x psn=0 lid=0 gid=00000000000000000000000000000000 addr=0 rkey=0 len=0",
      "qpn=1 psn=0 lid=0 gid=00000000000000000000000000000000 addr=0g rkey=0 len=0",
  };
  for (const std::string& t : bad) {
    EXPECT_EQ(Endpoint::parse(t).status().code(), StatusCode::kInvalidArgument) << t;
  }
  EXPECT_TRUE(Endpoint::parse(good).ok()) << good;
}

TEST(VerbsContext, MissingDevicesGiveActionableErrors) {
  auto names = device_names();
  ASSERT_TRUE(names.ok()) << names.status().to_string();
  if (!names->empty()) GTEST_SKIP() << "this machine has RDMA devices; the no-device errors are not reachable";
  auto any = Context::open({});
  EXPECT_EQ(any.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(any.status().message().find("rdma link add"), std::string::npos) << any.status().to_string();
  auto named = Context::open({.device = "rxe9"});
  EXPECT_EQ(named.status().code(), StatusCode::kUnavailable) << named.status().to_string();
}

}  // namespace
}  // namespace nrx::transport::verbs
