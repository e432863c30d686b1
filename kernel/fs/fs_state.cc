#include "kernel/fs/fs_state.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "base/check.h"
#include "kernel/fs/path.h"

namespace nrx::fs {
namespace {

constexpr uint32_t kHole = UINT32_MAX;  // Frame::pool of a page never written
constexpr uint64_t kPage = mem::kBaseFrameSize;
constexpr uint32_t kAllocsPerLog = 16;  // AllocKey::seq = log << kAllocsPerLog | n

bool is_hole(const mem::Frame& f) { return f.pool == kHole; }

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdULL;
}

uint64_t mix_bytes(uint64_t h, std::span<const std::byte> bytes) {
  for (std::byte b : bytes) h = (h ^ static_cast<uint64_t>(b)) * 0x100000001b3ULL;
  return h;
}

}  // namespace

uint32_t FsLogMapper::operator()(const FsState::ReadOp& op, uint32_t n) const {
  if (op.kind == FsState::ReadOp::kLookup) return static_cast<uint32_t>(std::hash<std::string_view>{}(op.path) % n);
  return static_cast<uint32_t>(op.ino % n);
}

FsState::FsState(mem::Memory& memory, mem::DeterministicAllocator* det, uint32_t slot,
                 const std::vector<logs::Log*>* logs)
    : memory_(memory), det_(det), slot_(slot), logs_(logs) {
  WriterLock ns(ns_mu_);
  auto root = std::make_unique<Inode>();
  root->ino = kRootIno;
  root->type = FileType::kDir;
  root->parent = kRootIno;
  {
    WriterLock l(root->mu);
    root->mode = 0755;
  }
  inodes_.emplace(kRootIno, std::move(root));
}

FsState::~FsState() {
  WriterLock ns(ns_mu_);
  for (auto& [ino, inode] : inodes_) {
    WriterLock l(inode->mu);
    free_pages_from(*inode, 0);
  }
}

FsState::Inode* FsState::find_locked(Ino ino) const {
  auto it = inodes_.find(ino);
  return it == inodes_.end() ? nullptr : it->second.get();
}

Result<FsState::Inode*> FsState::resolve_locked(const std::vector<std::string_view>& parts) const {
  Inode* cur = find_locked(kRootIno);
  for (std::string_view name : parts) {
    if (cur->type != FileType::kDir) return fs_error(ENOTDIR, "a path component is not a directory");
    auto it = cur->entries.find(name);
    if (it == cur->entries.end()) return fs_error(ENOENT, "no such file or directory: " + std::string(name));
    cur = find_locked(it->second);
    NRX_CHECK(cur != nullptr, "directory entry without an inode");
  }
  return cur;
}

Result<FsState::Inode*> FsState::parent_locked(const std::vector<std::string_view>& parts) const {
  std::vector<std::string_view> up(parts.begin(), parts.end() - 1);
  NRX_ASSIGN_OR_RETURN(Inode * dir, resolve_locked(up));
  if (dir->type != FileType::kDir) return fs_error(ENOTDIR, "parent is not a directory");
  return dir;
}

FsState::Inode* FsState::make_inode_locked(FileType type, uint32_t mode, int64_t now, Inode* parent) const {
  auto inode = std::make_unique<Inode>();
  inode->ino = next_ino_++;
  inode->type = type;
  inode->parent = parent->ino;
  {
    WriterLock l(inode->mu);
    inode->mode = mode & 07777;
    inode->atime_ns = inode->mtime_ns = inode->ctime_ns = now;
  }
  Inode* raw = inode.get();
  inodes_.emplace(raw->ino, std::move(inode));
  return raw;
}

void FsState::drop_inode_locked(Inode* inode) const {
  {
    WriterLock l(inode->mu);
    free_pages_from(*inode, 0);
  }
  inodes_.erase(inode->ino);
}

void FsState::free_pages_from(Inode& inode, uint64_t first_page) const {
  for (uint64_t p = first_page; p < inode.pages.size(); ++p) {
    const mem::Frame& f = inode.pages[p];
    if (!is_hole(f)) NRX_CHECK(memory_.ncache(f.pool).free(f).ok(), "freeing a file frame failed");
  }
  if (first_page < inode.pages.size()) inode.pages.resize(first_page);
}

Stat FsState::stat_of(const Inode& inode) const {
  Stat s;
  s.ino = inode.ino;
  s.type = inode.type;
  s.mode = inode.mode;
  s.nlink = inode.type == FileType::kDir ? 2 + inode.subdirs : 1;
  s.size = inode.type == FileType::kDir ? inode.entries.size() : inode.size;
  s.blocks = static_cast<uint64_t>(std::count_if(inode.pages.begin(), inode.pages.end(),
                                                 [](const mem::Frame& f) { return !is_hole(f); }));
  s.atime_ns = inode.atime_ns;
  s.mtime_ns = inode.mtime_ns;
  s.ctime_ns = inode.ctime_ns;
  return s;
}

FsState::Response FsState::dispatch(const ReadOp& op) const {
  Response r;
  ReaderLock ns(ns_mu_);
  if (op.kind == ReadOp::kLookup) {
    auto parts = split_path(op.path);
    if (!parts.ok()) {
      r.status = parts.status();
      return r;
    }
    auto inode = resolve_locked(*parts);
    if (!inode.ok()) {
      r.status = inode.status();
    } else {
      r.ino = (*inode)->ino;
      r.stat.type = (*inode)->type;
    }
    return r;
  }
  Inode* inode = find_locked(op.ino);
  if (inode == nullptr) {
    r.status = fs_error(EBADF, "no inode " + std::to_string(op.ino));
    return r;
  }
  ReaderLock l(inode->mu);
  switch (op.kind) {
    case ReadOp::kStat:
      r.stat = stat_of(*inode);
      break;
    case ReadOp::kReadDir:
      if (inode->type != FileType::kDir) {
        r.status = fs_error(ENOTDIR, "not a directory");
        break;
      }
      r.entries.reserve(inode->entries.size());
      for (const auto& [name, ino] : inode->entries) r.entries.push_back({name, ino, find_locked(ino)->type});
      break;
    case ReadOp::kRead: {
      if (inode->type == FileType::kDir) {
        r.status = fs_error(EISDIR, "is a directory");
        break;
      }
      if (op.offset >= inode->size) break;  // 0 bytes: end of file
      const uint64_t n = std::min<uint64_t>({op.out.size(), inode->size - op.offset, kMaxIo});
      for (uint64_t done = 0; done < n;) {
        const uint64_t pos = op.offset + done;
        const uint64_t page = pos / kPage;
        const uint64_t in_page = pos % kPage;
        const uint64_t chunk = std::min(n - done, kPage - in_page);
        std::byte* dst = op.out.data() + done;
        if (page < inode->pages.size() && !is_hole(inode->pages[page])) {
          std::memcpy(dst, memory_.physical().frame_ptr(inode->pages[page]) + in_page, chunk);
        } else {
          std::memset(dst, 0, chunk);
        }
        done += chunk;
      }
      r.count = n;
      break;
    }
    default:
      r.status = fs_error(EINVAL, "unknown read operation");
  }
  return r;
}

FsState::Response FsState::dispatch_mut(const WriteOp& op, const nr::ApplyContext& ctx) const {
  Response r;
  std::span<const std::byte> data;
  logs::Log* log = ctx.log < logs_->size() ? (*logs_)[ctx.log] : nullptr;
  if (op.kind == WriteOp::kPwrite) {
    auto bytes = log != nullptr ? log->payload_get(op.data) : Result<std::span<const std::byte>>(Status::not_found("no log"));
    if (!bytes.ok()) {
      r.status = fs_error(EINVAL, "write data is missing: " + bytes.status().to_string());
      return r;
    }
    data = *bytes;
  }
  {
    ReaderLock ns(ns_mu_);
    Inode* inode = find_locked(op.ino);
    if (inode == nullptr) {
      r.status = fs_error(EBADF, "no inode " + std::to_string(op.ino));
    } else if (inode->type == FileType::kDir && op.kind != WriteOp::kChmod && op.kind != WriteOp::kSetTimes) {
      r.status = fs_error(EISDIR, "is a directory");
    } else {
      WriterLock l(inode->mu);
      r = write_locked(op, ctx, *inode, data);
    }
  }
  // Every replica releases the payload once, after applying (the last release frees it).
  if (op.kind == WriteOp::kPwrite) (void)log->payload_release(ctx.replica, op.data);
  return r;
}

FsState::Response FsState::write_locked(const WriteOp& op, const nr::ApplyContext& ctx, Inode& inode,
                                        std::span<const std::byte> data) const {
  Response r;
  switch (op.kind) {
    case WriteOp::kPwrite: {
      if (data.empty()) {
        r.status = fs_error(EINVAL, "empty write");
        return r;
      }
      if (op.offset >= kMaxFileSize || data.size() > kMaxFileSize - op.offset) {
        r.status = fs_error(EFBIG, "write past the largest file size");
        return r;
      }
      const uint64_t first = op.offset / kPage;
      const uint64_t last = (op.offset + data.size() - 1) / kPage;
      uint32_t holes = 0;
      for (uint64_t p = first; p <= last; ++p) {
        if (p >= inode.pages.size() || is_hole(inode.pages[p])) ++holes;
      }
      std::vector<mem::Frame> fresh;
      if (holes > 0) {
        // The first replica here allocates for all; an out-of-space is everyone's.
        auto got = det_->take_per_replica({ctx.index, ctx.log << kAllocsPerLog}, slot_, mem::FrameClass::kBase, holes);
        if (!got.ok()) {
          r.status = fs_error(ENOSPC, "no space left on the file system");
          return r;
        }
        fresh = std::move(*got);
      }
      if (inode.pages.size() <= last) inode.pages.resize(last + 1, mem::Frame{.pool = kHole});
      size_t next = 0;
      for (uint64_t p = first; p <= last; ++p) {
        if (!is_hole(inode.pages[p])) continue;
        inode.pages[p] = fresh[next++];
        std::memset(memory_.physical().frame_ptr(inode.pages[p]), 0, kPage);
      }
      for (uint64_t done = 0; done < data.size();) {
        const uint64_t pos = op.offset + done;
        const uint64_t chunk = std::min<uint64_t>(data.size() - done, kPage - pos % kPage);
        std::memcpy(memory_.physical().frame_ptr(inode.pages[pos / kPage]) + pos % kPage, data.data() + done, chunk);
        done += chunk;
      }
      inode.size = std::max(inode.size, op.offset + data.size());
      inode.mtime_ns = inode.ctime_ns = op.mtime_ns;
      r.count = data.size();
      return r;
    }
    case WriteOp::kSetSize: {
      if (op.offset > kMaxFileSize) {
        r.status = fs_error(EFBIG, "size past the largest file size");
        return r;
      }
      const uint64_t keep = (op.offset + kPage - 1) / kPage;
      free_pages_from(inode, keep);
      if (op.offset % kPage != 0 && keep - 1 < inode.pages.size() && !is_hole(inode.pages[keep - 1])) {
        // Zero the tail of the last page, so growing the file later reads zeros there.
        std::memset(memory_.physical().frame_ptr(inode.pages[keep - 1]) + op.offset % kPage, 0, kPage - op.offset % kPage);
      }
      inode.size = op.offset;
      inode.mtime_ns = inode.ctime_ns = op.mtime_ns;
      return r;
    }
    case WriteOp::kChmod:
      if ((op.mode & ~07777u) != 0) {
        r.status = fs_error(EINVAL, "mode has bits beyond 07777");
        return r;
      }
      inode.mode = op.mode;
      inode.ctime_ns = op.mtime_ns;
      return r;
    case WriteOp::kSetTimes:
      if (op.atime_ns >= 0) inode.atime_ns = op.atime_ns;
      if (op.mtime_ns >= 0) inode.mtime_ns = op.mtime_ns;
      return r;
  }
  r.status = fs_error(EINVAL, "unknown write operation");
  return r;
}

FsState::Response FsState::dispatch_scan(const ScanOp&) const {
  Response r;
  r.status = fs_error(EINVAL, "NR-FS has no scan-reads");
  return r;
}

FsState::Response FsState::dispatch_scan_mut(const ScanOp& op, const nr::ApplyContext& ctx) const {
  Response r;
  logs::Log* log = logs_->empty() ? nullptr : (*logs_)[0];
  auto bytes = log != nullptr ? log->payload_get(op.names) : Result<std::span<const std::byte>>(Status::not_found("no log"));
  if (!bytes.ok() || uint64_t{op.len_a} + op.len_b != bytes->size()) {
    r.status = fs_error(EINVAL, "path payload is missing or malformed");
  } else {
    const auto* chars = reinterpret_cast<const char*>(bytes->data());
    WriterLock ns(ns_mu_);
    r = scan_locked(op, std::string_view(chars, op.len_a), std::string_view(chars + op.len_a, op.len_b));
  }
  if (bytes.ok()) (void)log->payload_release(ctx.replica, op.names);
  return r;
}

FsState::Response FsState::scan_locked(const ScanOp& op, std::string_view a, std::string_view b) const {
  Response r;
  if (op.kind == ScanOp::kRename) return rename_locked(op, a, b);
  auto parts_or = split_path(a);
  if (!parts_or.ok()) {
    r.status = parts_or.status();
    return r;
  }
  const std::vector<std::string_view>& parts = *parts_or;
  if (parts.empty()) {
    r.status = op.kind == ScanOp::kCreateFile || op.kind == ScanOp::kMkdir ? fs_error(EEXIST, "the root exists")
                                                                       : fs_error(EINVAL, "the root cannot be removed");
    if (op.kind == ScanOp::kCreateFile && !op.exclusive) {
      r.status = Status();
      r.ino = kRootIno;
      r.stat.type = FileType::kDir;
    }
    return r;
  }
  auto dir_or = parent_locked(parts);
  if (!dir_or.ok()) {
    r.status = dir_or.status();
    return r;
  }
  Inode* dir = *dir_or;
  const std::string_view name = parts.back();
  auto it = dir->entries.find(name);
  Inode* existing = it == dir->entries.end() ? nullptr : find_locked(it->second);
  switch (op.kind) {
    case ScanOp::kCreateFile:
      if (existing != nullptr) {
        if (op.exclusive) {
          r.status = fs_error(EEXIST, "file exists");
        } else {
          r.ino = existing->ino;
          r.stat.type = existing->type;
        }
        return r;
      }
      [[fallthrough]];
    case ScanOp::kMkdir: {
      if (existing != nullptr) {
        r.status = fs_error(EEXIST, "file exists");
        return r;
      }
      const FileType type = op.kind == ScanOp::kMkdir ? FileType::kDir : FileType::kFile;
      Inode* inode = make_inode_locked(type, op.mode, op.now_ns, dir);
      dir->entries.emplace(std::string(name), inode->ino);
      if (type == FileType::kDir) ++dir->subdirs;
      {
        WriterLock l(dir->mu);
        dir->mtime_ns = dir->ctime_ns = op.now_ns;
      }
      r.ino = inode->ino;
      r.stat.type = type;
      return r;
    }
    case ScanOp::kRmdir:
    case ScanOp::kUnlink: {
      if (existing == nullptr) {
        r.status = fs_error(ENOENT, "no such file or directory");
        return r;
      }
      if (op.kind == ScanOp::kRmdir) {
        if (existing->type != FileType::kDir) {
          r.status = fs_error(ENOTDIR, "not a directory");
          return r;
        }
        if (!existing->entries.empty()) {
          r.status = fs_error(ENOTEMPTY, "directory not empty");
          return r;
        }
        --dir->subdirs;
      } else if (existing->type == FileType::kDir) {
        r.status = fs_error(EISDIR, "is a directory");
        return r;
      }
      dir->entries.erase(it);
      drop_inode_locked(existing);
      WriterLock l(dir->mu);
      dir->mtime_ns = dir->ctime_ns = op.now_ns;
      return r;
    }
    default:
      r.status = fs_error(EINVAL, "unknown namespace operation");
      return r;
  }
}

FsState::Response FsState::rename_locked(const ScanOp& op, std::string_view from, std::string_view to) const {
  Response r;
  auto fp = split_path(from);
  auto tp = split_path(to);
  if (!fp.ok() || !tp.ok()) {
    r.status = !fp.ok() ? fp.status() : tp.status();
    return r;
  }
  if (fp->empty() || tp->empty()) {
    r.status = fs_error(EINVAL, "the root cannot be renamed");
    return r;
  }
  auto src_dir = parent_locked(*fp);
  if (!src_dir.ok()) {
    r.status = src_dir.status();
    return r;
  }
  auto src_it = (*src_dir)->entries.find(fp->back());
  if (src_it == (*src_dir)->entries.end()) {
    r.status = fs_error(ENOENT, "no such file or directory");
    return r;
  }
  Inode* src = find_locked(src_it->second);
  auto dst_dir = parent_locked(*tp);
  if (!dst_dir.ok()) {
    r.status = dst_dir.status();
    return r;
  }
  if (*fp == *tp) return r;  // same entry: nothing to do
  if (src->type == FileType::kDir && tp->size() > fp->size() &&
      std::equal(fp->begin(), fp->end(), tp->begin())) {
    r.status = fs_error(EINVAL, "cannot move a directory into itself");
    return r;
  }
  auto dst_it = (*dst_dir)->entries.find(tp->back());
  if (dst_it != (*dst_dir)->entries.end()) {
    Inode* dst = find_locked(dst_it->second);
    if (src->type == FileType::kDir && dst->type != FileType::kDir) {
      r.status = fs_error(ENOTDIR, "cannot replace a file with a directory");
      return r;
    }
    if (src->type != FileType::kDir && dst->type == FileType::kDir) {
      r.status = fs_error(EISDIR, "cannot replace a directory with a file");
      return r;
    }
    if (dst->type == FileType::kDir && !dst->entries.empty()) {
      r.status = fs_error(ENOTEMPTY, "directory not empty");
      return r;
    }
    if (dst->type == FileType::kDir) --(*dst_dir)->subdirs;
    (*dst_dir)->entries.erase(dst_it);
    drop_inode_locked(dst);
  }
  const Ino ino = src_it->second;
  (*src_dir)->entries.erase(src_it);
  if (src->type == FileType::kDir) {
    --(*src_dir)->subdirs;
    ++(*dst_dir)->subdirs;
    src->parent = (*dst_dir)->ino;
  }
  (*dst_dir)->entries.emplace(std::string(tp->back()), ino);
  for (Inode* d : {*src_dir, *dst_dir}) {
    WriterLock l(d->mu);
    d->mtime_ns = d->ctime_ns = op.now_ns;
  }
  WriterLock l(src->mu);
  src->ctime_ns = op.now_ns;
  return r;
}

uint64_t FsState::digest() const {
  ReaderLock ns(ns_mu_);
  uint64_t h = 0x6e72782d6673ULL;  // "nrx-fs"
  std::vector<std::pair<std::string, Inode*>> stack{{"", find_locked(kRootIno)}};
  while (!stack.empty()) {
    auto [path, inode] = stack.back();
    stack.pop_back();
    h = mix_bytes(mix(h, inode->ino), std::as_bytes(std::span(path)));
    ReaderLock l(inode->mu);
    h = mix(mix(mix(mix(h, static_cast<uint64_t>(inode->type)), inode->mode), inode->size),
            static_cast<uint64_t>(inode->mtime_ns));
    for (uint64_t p = 0; p < inode->pages.size(); ++p) {
      if (is_hole(inode->pages[p])) continue;
      const uint64_t valid = std::min<uint64_t>(kPage, inode->size - std::min(inode->size, p * kPage));
      h = mix_bytes(mix(h, p), std::span(memory_.physical().frame_ptr(inode->pages[p]), valid));
    }
    for (auto it = inode->entries.rbegin(); it != inode->entries.rend(); ++it) {
      stack.push_back({path + "/" + it->first, find_locked(it->second)});
    }
  }
  return h;
}

uint64_t FsState::inode_count() const {
  ReaderLock ns(ns_mu_);
  return inodes_.size();
}

}  // namespace nrx::fs
