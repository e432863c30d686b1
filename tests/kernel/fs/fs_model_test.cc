// Model-based test of NR-FS: random operation sequences (4 seeds x 30,000 = 1.2 x 10^5 ops) on 2
// replicas over 4 logs, issued through both replicas at random, each compared with a plain
// in-memory model (a tree of nodes holding strings). Every answer must match: the POSIX error, the
// bytes read, sizes, types, modes and directory listings; every 2,000 ops both replicas' digests
// must be equal. Names come from a tiny alphabet so operations collide all the time.
#include <cerrno>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernel/fs/fs.h"
#include "kernel/mem/memory.h"

namespace nrx::fs {
namespace {

struct Node {
  bool dir = false;
  uint32_t mode = 0;
  std::string data;
  std::map<std::string, std::unique_ptr<Node>> kids;
};

using Parts = std::vector<std::string>;

class Model {
 public:
  Model() { root_.dir = true; }

  // The node at |p|, or the errno of resolving it.
  std::pair<Node*, int> find(const Parts& p) {
    Node* cur = &root_;
    for (const auto& name : p) {
      if (!cur->dir) return {nullptr, ENOTDIR};
      auto it = cur->kids.find(name);
      if (it == cur->kids.end()) return {nullptr, ENOENT};
      cur = it->second.get();
    }
    return {cur, 0};
  }
  std::pair<Node*, int> parent(const Parts& p) {
    auto r = find(Parts(p.begin(), p.end() - 1));
    if (r.first != nullptr && !r.first->dir) return {nullptr, ENOTDIR};
    return r;
  }

  int create(const Parts& p, bool dir, bool exclusive) {
    auto [d, e] = parent(p);
    if (d == nullptr) return e;
    auto it = d->kids.find(p.back());
    if (it != d->kids.end()) {
      if (dir || exclusive) return EEXIST;
      return 0;
    }
    auto n = std::make_unique<Node>();
    n->dir = dir;
    n->mode = dir ? 0755 : 0644;
    d->kids[p.back()] = std::move(n);
    return 0;
  }
  int remove(const Parts& p, bool dir) {
    auto [d, e] = parent(p);
    if (d == nullptr) return e;
    auto it = d->kids.find(p.back());
    if (it == d->kids.end()) return ENOENT;
    if (dir && !it->second->dir) return ENOTDIR;
    if (dir && !it->second->kids.empty()) return ENOTEMPTY;
    if (!dir && it->second->dir) return EISDIR;
    d->kids.erase(it);
    return 0;
  }
  int rename(const Parts& a, const Parts& b) {
    auto [sd, se] = parent(a);
    if (sd == nullptr) return se;
    auto sit = sd->kids.find(a.back());
    if (sit == sd->kids.end()) return ENOENT;
    auto [dd, de] = parent(b);
    if (dd == nullptr) return de;
    if (a == b) return 0;
    if (sit->second->dir && b.size() > a.size() && std::equal(a.begin(), a.end(), b.begin())) return EINVAL;
    auto dit = dd->kids.find(b.back());
    if (dit != dd->kids.end()) {
      if (sit->second->dir && !dit->second->dir) return ENOTDIR;
      if (!sit->second->dir && dit->second->dir) return EISDIR;
      if (dit->second->dir && !dit->second->kids.empty()) return ENOTEMPTY;
    }
    std::unique_ptr<Node> moved = std::move(sit->second);
    sd->kids.erase(sit);
    dd->kids[b.back()] = std::move(moved);
    return 0;
  }

 private:
  Node root_;
};

std::string to_path(const Parts& p) {
  std::string s;
  for (const auto& n : p) s += "/" + n;
  return s.empty() ? "/" : s;
}

class FsModel : public ::testing::TestWithParam<uint64_t> {};

TEST_P(FsModel, ReplicasAgreeWithTheModel) {
  constexpr int kOps = 30'000;
  std::mt19937_64 rng(GetParam());
  auto memory = mem::Memory::create({.nodes = 2, .pool_bytes = 64ull << 20}).value();
  auto fs = FileSystem<>::create(*memory, {.logs = 4, .replica_pools = {0, 1}}).value();
  Handle h[2] = {fs->attach(0).value(), fs->attach(1).value()};
  Model model;
  std::map<std::string, int> outcomes;
  auto note = [&](const char* op, int e) { ++outcomes[std::string(op) + ":" + std::to_string(e)]; };
  auto random_parts = [&] {
    Parts p(1 + rng() % 3);
    for (auto& n : p) n = std::string(1, static_cast<char>('a' + rng() % 4));
    return p;
  };

  for (int i = 0; i < kOps; ++i) {
    if (i > 0 && i % 2000 == 0) {  // at the top: the op branches below end with `continue`
      ASSERT_EQ(fs->digest(h[0]), fs->digest(h[1])) << "replicas diverged by op " << i;
    }
    Handle& hd = h[rng() % 2];
    const Parts p = random_parts();
    const std::string path = to_path(p);
    const uint64_t dice = rng() % 100;
    if (dice < 15) {  // create a file (sometimes exclusive)
      const bool excl = rng() % 3 == 0;
      const int want = model.create(p, false, excl);
      auto got = fs->open(hd, path, kCreate | kWrite | (excl ? kExclusive : 0));
      int e = to_errno(got.status());
      if (want == 0 && got.ok() && model.find(p).first->dir) e = 0;  // kCreate on a dir opens it...
      if (want == 0 && model.find(p).first->dir) {
        ASSERT_EQ(to_errno(got.status()), EISDIR) << "op " << i << " " << path;  // ...but not for writing
        note("create", EISDIR);
        continue;
      }
      ASSERT_EQ(e, want) << "op " << i << " create " << path << " " << got.status().to_string();
      note("create", want);
    } else if (dice < 25) {
      const int want = model.create(p, true, true);
      ASSERT_EQ(to_errno(fs->mkdir(hd, path)), want) << "op " << i << " mkdir " << path;
      note("mkdir", want);
    } else if (dice < 32) {
      const int want = model.remove(p, true);
      ASSERT_EQ(to_errno(fs->rmdir(hd, path)), want) << "op " << i << " rmdir " << path;
      note("rmdir", want);
    } else if (dice < 40) {
      const int want = model.remove(p, false);
      ASSERT_EQ(to_errno(fs->unlink(hd, path)), want) << "op " << i << " unlink " << path;
      note("unlink", want);
    } else if (dice < 48) {
      const Parts q = random_parts();
      const int want = model.rename(p, q);
      ASSERT_EQ(to_errno(fs->rename(hd, path, to_path(q))), want) << "op " << i << " rename " << path << " " << to_path(q);
      note("rename", want);
    } else if (dice < 85) {  // data: write, read, truncate through the inode
      auto [node, e] = model.find(p);
      auto ino = fs->lookup(hd, path);
      ASSERT_EQ(to_errno(ino.status()), e) << "op " << i << " lookup " << path;
      if (node == nullptr || node->dir) {
        note("lookup", e);
        continue;
      }
      const uint64_t off = rng() % 12000;
      if (dice < 62) {
        std::string data(1 + rng() % 6000, '\0');
        for (auto& c : data) c = static_cast<char>('A' + rng() % 26);
        ASSERT_EQ(fs->pwrite(hd, *ino, std::as_bytes(std::span(data)), off).value(), data.size());
        if (node->data.size() < off + data.size()) node->data.resize(off + data.size(), '\0');
        node->data.replace(off, data.size(), data);
        note("pwrite", 0);
      } else if (dice < 78) {
        std::vector<std::byte> buf(1 + rng() % 9000);
        const size_t n = fs->pread(hd, *ino, buf, off).value();
        const std::string want = off >= node->data.size() ? "" : node->data.substr(off, buf.size());
        ASSERT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), n), want) << "op " << i << " pread " << path;
        note("pread", 0);
      } else {
        const uint64_t size = rng() % 16000;
        ASSERT_TRUE(fs->truncate(hd, *ino, size).ok());
        node->data.resize(size, '\0');
        note("truncate", 0);
      }
    } else if (dice < 93) {  // stat
      auto [node, e] = model.find(p);
      auto st = fs->stat(hd, path);
      ASSERT_EQ(to_errno(st.status()), e) << "op " << i << " stat " << path;
      if (node != nullptr) {
        EXPECT_EQ(st->type == FileType::kDir, node->dir) << path;
        if (!node->dir) {
          EXPECT_EQ(st->size, node->data.size()) << "op " << i << " " << path;
        }
        EXPECT_EQ(st->mode, node->mode);
      }
      note("stat", e);
    } else {  // readdir
      auto [node, e] = model.find(p);
      auto got = fs->readdir(hd, path);
      const int want = node != nullptr && !node->dir ? ENOTDIR : e;
      ASSERT_EQ(to_errno(got.status()), want) << "op " << i << " readdir " << path;
      if (got.ok()) {
        std::vector<std::string> names, model_names;
        for (const auto& d : *got) names.push_back(d.name);
        for (const auto& [name, kid] : node->kids) model_names.push_back(name);
        ASSERT_EQ(names, model_names) << "op " << i << " readdir " << path;
      }
      note("readdir", want);
    }
  }
  ASSERT_EQ(fs->digest(h[0]), fs->digest(h[1])) << "replicas diverged at the end";
  std::string summary;
  for (const auto& [k, n] : outcomes) summary += k + "=" + std::to_string(n) + " ";
  std::printf("seed %llu: %s\n", static_cast<unsigned long long>(GetParam()), summary.c_str());
  for (const char* k : {"create:0", "create:17", "mkdir:0", "mkdir:17", "rmdir:0", "rmdir:39", "unlink:0", "unlink:2",
                        "rename:0", "pwrite:0", "pread:0", "truncate:0", "stat:0", "stat:2", "readdir:0"}) {
    EXPECT_GE(outcomes[k], 20) << k << ": the op mix no longer covers this outcome";
  }
  EXPECT_EQ(fs->stats(h[0]).payloads_live, 0u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, FsModel, ::testing::Values(1, 2, 3, 4));

}  // namespace
}  // namespace nrx::fs
