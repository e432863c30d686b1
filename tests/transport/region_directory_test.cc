// Tests of transport::RegionDirectory: windows allocated by the creator are found by an attacher
// (page-aligned, disjoint, inside the region), open() waits for the seal and gives up at its
// deadline, and bad input (names, sizes, a full region or table, another cluster, a corrupt
// entry, calls out of turn) is an error that says why.
#include "transport/region_directory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

namespace nrx::transport {
namespace {

using namespace std::chrono_literals;

class Mapping {
 public:
  explicit Mapping(size_t n) : n_(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    p_ = static_cast<std::byte*>(p);
  }
  ~Mapping() { munmap(p_, n_); }
  std::span<std::byte> span() { return {p_, n_}; }

 private:
  size_t n_;
  std::byte* p_;
};

TEST(RegionDirectory, CreatorAllocatesAttacherFinds) {
  Mapping m(1 << 20);
  auto dir = RegionDirectory::format(m.span(), 7).value();
  auto a = dir.allocate("proc", 5000).value();
  auto b = dir.allocate("fs0", 4096).value();
  EXPECT_EQ(a.size(), 8192u) << "rounded up to pages";
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 4096, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 4096, 0u);
  EXPECT_GE(b.data(), a.data() + a.size()) << "windows are disjoint";
  EXPECT_EQ(dir.used(), RegionDirectory::kHeaderBytes + 8192 + 4096);
  std::memset(a.data(), 0xab, a.size());
  dir.seal();

  auto same = RegionDirectory::open(m.span(), 7, 1s).value();
  EXPECT_EQ(same.count(), 2u);
  auto a2 = same.find("proc").value();
  EXPECT_EQ(a2.data(), a.data());
  EXPECT_EQ(a2.size(), a.size());
  EXPECT_EQ(a2[4999], std::byte{0xab});
  EXPECT_EQ(same.find("fs1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(same.allocate("x", 1).status().code(), StatusCode::kFailedPrecondition) << "attachers do not allocate";
  EXPECT_EQ(dir.allocate("x", 1).status().code(), StatusCode::kFailedPrecondition) << "nothing after the seal";
}

TEST(RegionDirectory, OpenWaitsForTheSealAndGivesUp) {
  Mapping m(1 << 20);
  Status none = RegionDirectory::open(m.span(), 7, 30ms).status();
  EXPECT_EQ(none.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(none.message().find("nrx boot --log shm"), std::string::npos) << none.to_string();
  auto dir = RegionDirectory::format(m.span(), 7).value();
  ASSERT_TRUE(dir.allocate("proc", 4096).ok());
  EXPECT_EQ(RegionDirectory::open(m.span(), 7, 30ms).status().code(), StatusCode::kDeadlineExceeded)
      << "formatted but not sealed: still building";
  std::thread sealer([&] {
    std::this_thread::sleep_for(50ms);  // the creator is slow: open() must wait for it
    dir.seal();
  });
  auto got = RegionDirectory::open(m.span(), 7, 60s);
  sealer.join();
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_TRUE(got->find("proc").ok());
  Status other = RegionDirectory::open(m.span(), 8, 1s).status();
  EXPECT_EQ(other.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(other.message().find("cluster 7"), std::string::npos) << other.to_string();
}

TEST(RegionDirectory, BadInputIsRefusedWithAReason) {
  Mapping m(64 << 10);
  EXPECT_EQ(RegionDirectory::format(m.span().first(4096), 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RegionDirectory::format(m.span().subspan(8), 1).status().code(), StatusCode::kInvalidArgument);
  auto dir = RegionDirectory::format(m.span(), 1).value();
  EXPECT_EQ(dir.allocate("", 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dir.allocate(std::string(40, 'n'), 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dir.allocate("zero", 0).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(dir.allocate("a", 1).ok());
  EXPECT_EQ(dir.allocate("a", 1).status().code(), StatusCode::kAlreadyExists);
  Status full = dir.allocate("big", 1 << 20).status();
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("64 KiB"), std::string::npos) << full.to_string();
  // The table holds kMaxEntries windows.
  Mapping big(RegionDirectory::kHeaderBytes + (RegionDirectory::kMaxEntries + 1) * 4096);
  auto d2 = RegionDirectory::format(big.span(), 1).value();
  for (uint32_t i = 0; i < RegionDirectory::kMaxEntries; ++i) ASSERT_TRUE(d2.allocate("w" + std::to_string(i), 1).ok());
  EXPECT_EQ(d2.allocate("one-more", 1).status().code(), StatusCode::kResourceExhausted);
  d2.seal();
  // A corrupt entry (a window past the end) is refused on open.
  const uint64_t bogus = uint64_t{1} << 40;
  std::memcpy(big.span().data() + 64 + 40, &bogus, 8);
  EXPECT_EQ(RegionDirectory::open(big.span(), 1, 1s).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace nrx::transport
