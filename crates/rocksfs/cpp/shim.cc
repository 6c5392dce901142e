// pikafs RocksDB FileSystem shim.
//
// A rocksdb::FileSystemWrapper over FileSystem::Default(): every path under
// the configured prefix (e.g. "/pikafs") is served by pikafs through the
// Rust callbacks in `pikafs_callbacks` (prefix stripped: "/pikafs/db/1.sst"
// is fs path "/db/1.sst"); every other path goes to the wrapped local file
// system. A RocksDB secondary relies on that split: its private
// secondary_path and info LOG stay on local disk while the data it reads
// comes from pikafs.
//
// Rules kept throughout:
// - no C++ exception escapes an extern "C" function or a callback
//   boundary (Rust never unwinds into C++ either: it catches panics);
// - every path-taking FileSystem method is overridden, because the
//   wrapper would otherwise silently send a pikafs path to the local disk;
// - file objects hold only a Rust handle (u64); a handle Rust no longer
//   knows gives an error, never undefined behaviour.

#include "shim.h"

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/utilities/object_registry.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

// The C API's Env handle. It is private to RocksDB's db/c.cc, so its layout
// is repeated here: `rocksdb_env_destroy` deletes `rep` unless `is_default`,
// then the struct itself (allocated with `new` below, same allocator).
struct rocksdb_env_t {
  rocksdb::Env* rep;
  bool is_default;
};

namespace pikafs {
namespace {

using rocksdb::DirFsyncOptions;
using rocksdb::FileAttributes;
using rocksdb::FileLock;
using rocksdb::FileOptions;
using rocksdb::FileSystem;
using rocksdb::FSDirectory;
using rocksdb::FSRandomAccessFile;
using rocksdb::FSRandomRWFile;
using rocksdb::FSSequentialFile;
using rocksdb::FSWritableFile;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Logger;
using rocksdb::MemoryMappedFileBuffer;
using rocksdb::Slice;

struct Err {
  char msg[PIKAFS_ERR_CAP];
  Err() { msg[0] = '\0'; }
};

IOStatus ToStatus(int32_t code, const Err& e, bool plain_not_found = false) {
  switch (code) {
    case PIKAFS_OK:
      return IOStatus::OK();
    case PIKAFS_NOT_FOUND:
      // FileExists and GetChildren answer a plain NotFound (as the POSIX
      // file system does); the rest answer IOError(PathNotFound), which
      // IsPathNotFound() recognises.
      return plain_not_found ? IOStatus::NotFound(e.msg)
                             : IOStatus::PathNotFound(e.msg);
    case PIKAFS_NO_SPACE:
      return IOStatus::NoSpace(e.msg);
    case PIKAFS_NOT_SUPPORTED:
      return IOStatus::NotSupported(e.msg);
    case PIKAFS_INVALID_ARGUMENT:
      return IOStatus::InvalidArgument(e.msg);
    case PIKAFS_FENCED:
      // An IOError whose subcode tells RocksDB to stop writing for good.
      return IOStatus::IOFenced(e.msg);
    default:
      return IOStatus::IOError(e.msg);
  }
}

class PikaSequentialFile : public FSSequentialFile {
 public:
  PikaSequentialFile(const pikafs_callbacks* cb, uint64_t handle)
      : cb_(cb), handle_(handle) {}
  ~PikaSequentialFile() override {
    Err e;
    cb_->close(cb_->ctx, handle_, e.msg);
  }

  IOStatus Read(size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) override {
    Err e;
    size_t got = 0;
    int32_t rc = cb_->pread(cb_->ctx, handle_, offset_, scratch, n, &got,
                            e.msg);
    if (rc != PIKAFS_OK) {
      *result = Slice();
      return ToStatus(rc, e);
    }
    offset_ += got;
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions&,
                          Slice* result, char* scratch,
                          IODebugContext*) override {
    Err e;
    size_t got = 0;
    int32_t rc =
        cb_->pread(cb_->ctx, handle_, offset, scratch, n, &got, e.msg);
    if (rc != PIKAFS_OK) {
      *result = Slice();
      return ToStatus(rc, e);
    }
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  IOStatus Skip(uint64_t n) override {
    offset_ += n;
    return IOStatus::OK();
  }

 private:
  const pikafs_callbacks* cb_;
  uint64_t handle_;
  uint64_t offset_ = 0;
};

class PikaRandomAccessFile : public FSRandomAccessFile {
 public:
  PikaRandomAccessFile(const pikafs_callbacks* cb, uint64_t handle)
      : cb_(cb), handle_(handle) {}
  ~PikaRandomAccessFile() override {
    Err e;
    cb_->close(cb_->ctx, handle_, e.msg);
  }

  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result,
                char* scratch, IODebugContext*) const override {
    Err e;
    size_t got = 0;
    int32_t rc =
        cb_->pread(cb_->ctx, handle_, offset, scratch, n, &got, e.msg);
    if (rc != PIKAFS_OK) {
      *result = Slice();
      return ToStatus(rc, e);
    }
    *result = Slice(scratch, got);
    return IOStatus::OK();
  }

  // Reads are served by the fs on demand; RocksDB's own readahead (the
  // compaction_readahead_size / FilePrefetchBuffer) does the batching.
  IOStatus Prefetch(uint64_t, size_t, const IOOptions&,
                    IODebugContext*) override {
    return IOStatus::OK();
  }

  // 0: no inode-derived id, so RocksDB never builds cache keys from it
  // (inode numbers are per fs, and RO mounts see the same ones).
  size_t GetUniqueId(char*, size_t) const override { return 0; }

  IOStatus InvalidateCache(size_t, size_t) override { return IOStatus::OK(); }

 private:
  const pikafs_callbacks* cb_;
  uint64_t handle_;
};

class PikaWritableFile : public FSWritableFile {
 public:
  PikaWritableFile(const pikafs_callbacks* cb, uint64_t handle, uint64_t size,
                   const FileOptions& opts)
      : FSWritableFile(opts), cb_(cb), handle_(handle), size_(size) {}
  ~PikaWritableFile() override {
    if (open_) {
      Close(IOOptions(), nullptr).PermitUncheckedError();
    }
  }

  using FSWritableFile::Append;
  IOStatus Append(const Slice& data, const IOOptions&,
                  IODebugContext*) override {
    if (!open_) return IOStatus::IOError("append to a closed file");
    Err e;
    int32_t rc = cb_->pwrite(cb_->ctx, handle_, size_, data.data(),
                             data.size(), e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    size_ += data.size();
    dirty_ = true;
    return IOStatus::OK();
  }

  using FSWritableFile::PositionedAppend;
  IOStatus PositionedAppend(const Slice& data, uint64_t offset,
                            const IOOptions&, IODebugContext*) override {
    if (!open_) return IOStatus::IOError("append to a closed file");
    Err e;
    int32_t rc = cb_->pwrite(cb_->ctx, handle_, offset, data.data(),
                             data.size(), e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    if (offset + data.size() > size_) size_ = offset + data.size();
    dirty_ = true;
    return IOStatus::OK();
  }

  IOStatus Truncate(uint64_t size, const IOOptions&,
                    IODebugContext*) override {
    if (!open_) return IOStatus::IOError("truncate of a closed file");
    Err e;
    int32_t rc = cb_->truncate(cb_->ctx, handle_, size, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    size_ = size;
    dirty_ = true;
    return IOStatus::OK();
  }

  IOStatus Close(const IOOptions&, IODebugContext*) override {
    if (!open_) return IOStatus::OK();
    open_ = false;
    IOStatus s;
    if (preallocated_) {
      // Give back the preallocated tail, as the POSIX file system does
      // with ftruncate on close.
      Err e;
      int32_t rc = cb_->truncate(cb_->ctx, handle_, size_, e.msg);
      s = ToStatus(rc, e);
      dirty_ = true;
    }
    if (s.ok() && dirty_.load()) {
      // Close-to-open consistency: what was appended is committed when
      // the file is closed, so RO mounts (other hosts) see it, as a
      // process on the same host would with a local file. RocksDB syncs
      // the files it needs durable before closing them, so this is
      // usually a commit with nothing queued (free).
      Err e;
      int32_t rc = cb_->fsync(cb_->ctx, handle_, e.msg);
      s = ToStatus(rc, e);
    }
    Err e;
    int32_t rc = cb_->close(cb_->ctx, handle_, e.msg);
    if (s.ok()) {
      s = ToStatus(rc, e);
    }
    return s;
  }

  // Appends go to the fs as they come: RocksDB's WritableFileWriter
  // already buffers them (writable_file_max_buffer_size).
  IOStatus Flush(const IOOptions&, IODebugContext*) override {
    return IOStatus::OK();
  }

  IOStatus Sync(const IOOptions&, IODebugContext*) override {
    if (!open_) return IOStatus::IOError("sync of a closed file");
    // Cleared before the commit: an append racing it marks the file
    // dirty again (Sync may run on another thread than Append).
    dirty_.store(false);
    Err e;
    int32_t rc = cb_->fsync(cb_->ctx, handle_, e.msg);
    if (rc != PIKAFS_OK) dirty_.store(true);
    return ToStatus(rc, e);
  }

  IOStatus Fsync(const IOOptions& o, IODebugContext* d) override {
    return Sync(o, d);
  }

  // The fs commit is serialised inside pikafs; concurrent syncs are safe.
  bool IsSyncThreadSafe() const override { return true; }

  uint64_t GetFileSize(const IOOptions&, IODebugContext*) override {
    return size_;
  }

  // Data is durable only at Sync: a range sync would be one more
  // replicated commit for nothing.
  IOStatus RangeSync(uint64_t, uint64_t, const IOOptions&,
                     IODebugContext*) override {
    return IOStatus::OK();
  }

  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions&,
                    IODebugContext*) override {
    if (!open_) return IOStatus::IOError("allocate on a closed file");
    if (len == 0) return IOStatus::OK();
    Err e;
    int32_t rc = cb_->fallocate(cb_->ctx, handle_, offset, len, e.msg);
    if (rc == PIKAFS_OK) preallocated_ = true;
    return ToStatus(rc, e);
  }

  IOStatus InvalidateCache(size_t, size_t) override { return IOStatus::OK(); }

 private:
  const pikafs_callbacks* cb_;
  uint64_t handle_;
  uint64_t size_;
  bool open_ = true;
  bool preallocated_ = false;
  // Changed since the last successful Sync.
  std::atomic<bool> dirty_{false};
};

class PikaDirectory : public FSDirectory {
 public:
  explicit PikaDirectory(const pikafs_callbacks* cb) : cb_(cb) {}
  IOStatus Fsync(const IOOptions&, IODebugContext*) override {
    Err e;
    int32_t rc = cb_->sync_all(cb_->ctx, e.msg);
    return ToStatus(rc, e);
  }
  IOStatus Close(const IOOptions&, IODebugContext*) override {
    return IOStatus::OK();
  }

 private:
  const pikafs_callbacks* cb_;
};

class PikaLock : public FileLock {
 public:
  explicit PikaLock(std::string path) : path(std::move(path)) {}
  std::string path;
};

void PushName(void* out, const char* name, size_t len, uint64_t,
              int32_t) {
  static_cast<std::vector<std::string>*>(out)->emplace_back(name, len);
}

void PushAttr(void* out, const char* name, size_t len, uint64_t size,
              int32_t is_dir) {
  if (is_dir) return;
  FileAttributes a;
  a.name.assign(name, len);
  a.size_bytes = size;
  static_cast<std::vector<FileAttributes>*>(out)->push_back(std::move(a));
}

class PikaFileSystem : public rocksdb::FileSystemWrapper {
 public:
  PikaFileSystem(const pikafs_callbacks& cb, std::string prefix)
      : FileSystemWrapper(FileSystem::Default()),
        cb_(cb),
        prefix_(std::move(prefix)) {}
  ~PikaFileSystem() override { cb_.drop_ctx(cb_.ctx); }

  static const char* kClassName() { return "PikaFileSystem"; }
  const char* Name() const override { return kClassName(); }

  IOStatus NewSequentialFile(const std::string& f, const FileOptions& o,
                             std::unique_ptr<FSSequentialFile>* r,
                             IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewSequentialFile(f, o, r, d);
    uint64_t h = 0, size = 0;
    Err e;
    int32_t rc = cb_.open(cb_.ctx, p.data(), p.size(), PIKAFS_OPEN_READ, &h,
                          &size, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    r->reset(new PikaSequentialFile(&cb_, h));
    return IOStatus::OK();
  }

  IOStatus NewRandomAccessFile(const std::string& f, const FileOptions& o,
                               std::unique_ptr<FSRandomAccessFile>* r,
                               IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewRandomAccessFile(f, o, r, d);
    uint64_t h = 0, size = 0;
    Err e;
    int32_t rc = cb_.open(cb_.ctx, p.data(), p.size(), PIKAFS_OPEN_READ, &h,
                          &size, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    r->reset(new PikaRandomAccessFile(&cb_, h));
    return IOStatus::OK();
  }

  IOStatus NewWritableFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<FSWritableFile>* r,
                           IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewWritableFile(f, o, r, d);
    return OpenWritable(p, PIKAFS_OPEN_TRUNCATE, o, r);
  }

  IOStatus ReopenWritableFile(const std::string& f, const FileOptions& o,
                              std::unique_ptr<FSWritableFile>* r,
                              IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->ReopenWritableFile(f, o, r, d);
    return OpenWritable(p, PIKAFS_OPEN_APPEND, o, r);
  }

  IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                             const FileOptions& o,
                             std::unique_ptr<FSWritableFile>* r,
                             IODebugContext* d) override {
    std::string p, q;
    bool a = Route(f, &p), b = Route(old, &q);
    if (!a && !b) return target_->ReuseWritableFile(f, old, o, r, d);
    if (a != b) return CrossDevice("ReuseWritableFile", f, old);
    // Rename, then open truncated (the base class's generic recipe).
    return FileSystem::ReuseWritableFile(f, old, o, r, d);
  }

  IOStatus NewRandomRWFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<FSRandomRWFile>* r,
                           IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewRandomRWFile(f, o, r, d);
    return IOStatus::NotSupported("pikafs: NewRandomRWFile");
  }

  IOStatus NewMemoryMappedFileBuffer(
      const std::string& f,
      std::unique_ptr<MemoryMappedFileBuffer>* r) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewMemoryMappedFileBuffer(f, r);
    return IOStatus::NotSupported("pikafs: NewMemoryMappedFileBuffer");
  }

  IOStatus NewDirectory(const std::string& f, const IOOptions& o,
                        std::unique_ptr<FSDirectory>* r,
                        IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewDirectory(f, o, r, d);
    uint64_t size = 0, mtime = 0;
    int32_t is_dir = 0;
    Err e;
    int32_t rc =
        cb_.stat(cb_.ctx, p.data(), p.size(), &size, &mtime, &is_dir, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    if (!is_dir) return IOStatus::IOError(f + ": not a directory");
    r->reset(new PikaDirectory(&cb_));
    return IOStatus::OK();
  }

  IOStatus FileExists(const std::string& f, const IOOptions& o,
                      IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->FileExists(f, o, d);
    uint64_t size = 0, mtime = 0;
    int32_t is_dir = 0;
    Err e;
    int32_t rc =
        cb_.stat(cb_.ctx, p.data(), p.size(), &size, &mtime, &is_dir, e.msg);
    return ToStatus(rc, e, /*plain_not_found=*/true);
  }

  IOStatus GetChildren(const std::string& dir, const IOOptions& o,
                       std::vector<std::string>* r,
                       IODebugContext* d) override {
    std::string p;
    if (!Route(dir, &p)) return target_->GetChildren(dir, o, r, d);
    r->clear();
    Err e;
    int32_t rc = cb_.readdir(cb_.ctx, p.data(), p.size(), r, &PushName, e.msg);
    return ToStatus(rc, e, /*plain_not_found=*/true);
  }

  IOStatus GetChildrenFileAttributes(const std::string& dir,
                                     const IOOptions& o,
                                     std::vector<FileAttributes>* r,
                                     IODebugContext* d) override {
    std::string p;
    if (!Route(dir, &p)) {
      return target_->GetChildrenFileAttributes(dir, o, r, d);
    }
    r->clear();
    Err e;
    int32_t rc = cb_.readdir(cb_.ctx, p.data(), p.size(), r, &PushAttr, e.msg);
    return ToStatus(rc, e, /*plain_not_found=*/true);
  }

  IOStatus DeleteFile(const std::string& f, const IOOptions& o,
                      IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->DeleteFile(f, o, d);
    Err e;
    return ToStatus(cb_.unlink(cb_.ctx, p.data(), p.size(), e.msg), e);
  }

  IOStatus Truncate(const std::string& f, size_t size, const IOOptions& o,
                    IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->Truncate(f, size, o, d);
    Err e;
    return ToStatus(
        cb_.truncate_path(cb_.ctx, p.data(), p.size(), size, e.msg), e);
  }

  IOStatus CreateDir(const std::string& f, const IOOptions& o,
                     IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->CreateDir(f, o, d);
    Err e;
    return ToStatus(cb_.mkdir(cb_.ctx, p.data(), p.size(), 0, e.msg), e);
  }

  IOStatus CreateDirIfMissing(const std::string& f, const IOOptions& o,
                              IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->CreateDirIfMissing(f, o, d);
    Err e;
    return ToStatus(cb_.mkdir(cb_.ctx, p.data(), p.size(), 1, e.msg), e);
  }

  IOStatus DeleteDir(const std::string& f, const IOOptions& o,
                     IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->DeleteDir(f, o, d);
    Err e;
    return ToStatus(cb_.rmdir(cb_.ctx, p.data(), p.size(), e.msg), e);
  }

  IOStatus GetFileSize(const std::string& f, const IOOptions& o, uint64_t* s,
                       IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->GetFileSize(f, o, s, d);
    uint64_t mtime = 0;
    int32_t is_dir = 0;
    Err e;
    return ToStatus(
        cb_.stat(cb_.ctx, p.data(), p.size(), s, &mtime, &is_dir, e.msg), e);
  }

  IOStatus GetFileModificationTime(const std::string& f, const IOOptions& o,
                                   uint64_t* t, IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->GetFileModificationTime(f, o, t, d);
    uint64_t size = 0, mtime_ns = 0;
    int32_t is_dir = 0;
    Err e;
    int32_t rc = cb_.stat(cb_.ctx, p.data(), p.size(), &size, &mtime_ns,
                          &is_dir, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    *t = mtime_ns / 1000000000ull;  // RocksDB wants seconds
    return IOStatus::OK();
  }

  IOStatus GetAbsolutePath(const std::string& f, const IOOptions& o,
                           std::string* out, IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->GetAbsolutePath(f, o, out, d);
    *out = f;  // a routed path starts with the absolute prefix
    return IOStatus::OK();
  }

  IOStatus RenameFile(const std::string& s, const std::string& t,
                      const IOOptions& o, IODebugContext* d) override {
    std::string p, q;
    bool a = Route(s, &p), b = Route(t, &q);
    if (!a && !b) return target_->RenameFile(s, t, o, d);
    if (a != b) return CrossDevice("RenameFile", s, t);
    Err e;
    return ToStatus(
        cb_.rename(cb_.ctx, p.data(), p.size(), q.data(), q.size(), e.msg), e);
  }

  IOStatus LinkFile(const std::string& s, const std::string& t,
                    const IOOptions& o, IODebugContext* d) override {
    std::string p, q;
    if (!Route(s, &p) && !Route(t, &q)) return target_->LinkFile(s, t, o, d);
    return IOStatus::NotSupported("pikafs: no hard links");
  }

  IOStatus NumFileLinks(const std::string& f, const IOOptions& o,
                        uint64_t* c, IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NumFileLinks(f, o, c, d);
    return IOStatus::NotSupported("pikafs: no hard links");
  }

  IOStatus AreFilesSame(const std::string& a, const std::string& b,
                        const IOOptions& o, bool* res,
                        IODebugContext* d) override {
    std::string p, q;
    if (!Route(a, &p) && !Route(b, &q)) {
      return target_->AreFilesSame(a, b, o, res, d);
    }
    return IOStatus::NotSupported("pikafs: AreFilesSame");
  }

  IOStatus SyncFile(const std::string& f, const FileOptions& fo,
                    const IOOptions& io, bool use_fsync,
                    IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->SyncFile(f, fo, io, use_fsync, d);
    Err e;
    return ToStatus(cb_.sync_all(cb_.ctx, e.msg), e);
  }

  IOStatus LockFile(const std::string& f, const IOOptions& o, FileLock** l,
                    IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->LockFile(f, o, l, d);
    Err e;
    int32_t rc = cb_.lock(cb_.ctx, p.data(), p.size(), e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    auto* lock = new PikaLock(p);
    {
      std::lock_guard<std::mutex> g(locks_mu_);
      locks_.insert(lock);
    }
    *l = lock;
    return IOStatus::OK();
  }

  IOStatus UnlockFile(FileLock* l, const IOOptions& o,
                      IODebugContext* d) override {
    PikaLock* mine = nullptr;
    {
      std::lock_guard<std::mutex> g(locks_mu_);
      auto it = locks_.find(l);
      if (it != locks_.end()) {
        mine = static_cast<PikaLock*>(*it);  // only PikaLocks are in the set
        locks_.erase(it);
      }
    }
    if (mine == nullptr) return target_->UnlockFile(l, o, d);
    Err e;
    int32_t rc =
        cb_.unlock(cb_.ctx, mine->path.data(), mine->path.size(), e.msg);
    delete mine;
    return ToStatus(rc, e);
  }

  IOStatus NewLogger(const std::string& f, const IOOptions& o,
                     std::shared_ptr<Logger>* r, IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->NewLogger(f, o, r, d);
    // The generic EnvLogger over our own NewWritableFile: LOG becomes a
    // pikafs file, buffered 1 MiB and flushed every few seconds.
    return FileSystem::NewLogger(f, o, r, d);
  }

  IOStatus GetFreeSpace(const std::string& f, const IOOptions& o,
                        uint64_t* free_bytes, IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->GetFreeSpace(f, o, free_bytes, d);
    Err e;
    return ToStatus(cb_.free_space(cb_.ctx, free_bytes, e.msg), e);
  }

  IOStatus IsDirectory(const std::string& f, const IOOptions& o, bool* is_dir,
                       IODebugContext* d) override {
    std::string p;
    if (!Route(f, &p)) return target_->IsDirectory(f, o, is_dir, d);
    uint64_t size = 0, mtime = 0;
    int32_t dir = 0;
    Err e;
    int32_t rc =
        cb_.stat(cb_.ctx, p.data(), p.size(), &size, &mtime, &dir, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    *is_dir = dir != 0;
    return IOStatus::OK();
  }

  void DiscardCacheForDirectory(const std::string& f) override {
    std::string p;
    if (!Route(f, &p)) target_->DiscardCacheForDirectory(f);
  }

 private:
  // True when `f` is a pikafs path; `*out` is then the fs path.
  bool Route(const std::string& f, std::string* out) const {
    if (f.size() < prefix_.size() ||
        f.compare(0, prefix_.size(), prefix_) != 0) {
      return false;
    }
    if (f.size() == prefix_.size()) {
      *out = "/";
      return true;
    }
    if (f[prefix_.size()] != '/') return false;  // "/pikafsX" is local
    out->assign(f, prefix_.size(), std::string::npos);
    return true;
  }

  static IOStatus CrossDevice(const char* op, const std::string& a,
                              const std::string& b) {
    return IOStatus::NotSupported(std::string("pikafs: ") + op +
                                  " across pikafs and the local disk: " + a +
                                  " -> " + b);
  }

  IOStatus OpenWritable(const std::string& p, int32_t how,
                        const FileOptions& o,
                        std::unique_ptr<FSWritableFile>* r) {
    uint64_t h = 0, size = 0;
    Err e;
    int32_t rc =
        cb_.open(cb_.ctx, p.data(), p.size(), how, &h, &size, e.msg);
    if (rc != PIKAFS_OK) return ToStatus(rc, e);
    r->reset(new PikaWritableFile(&cb_, h, size, o));
    return IOStatus::OK();
  }

  const pikafs_callbacks cb_;
  const std::string prefix_;
  std::mutex locks_mu_;
  std::set<FileLock*> locks_;
};

// Envs findable by `env=pikafs:<name>` in an options string. The pointers
// are owned by their rocksdb_env_t (the Rust `PikaEnv`), which removes its
// entry before it frees the Env.
std::mutex& RegistryMu() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, rocksdb::Env*>& Registry() {
  static std::map<std::string, rocksdb::Env*> envs;
  return envs;
}

void RegisterFactoryOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    rocksdb::ObjectLibrary::Default()->AddFactory<rocksdb::Env>(
        rocksdb::ObjectLibrary::PatternEntry("pikafs", false)
            .AddSeparator(":"),
        [](const std::string& uri, std::unique_ptr<rocksdb::Env>*,
           std::string* errmsg) -> rocksdb::Env* {
          std::string name = uri.substr(uri.find(':') + 1);
          std::lock_guard<std::mutex> g(RegistryMu());
          auto it = Registry().find(name);
          if (it == Registry().end()) {
            *errmsg = "no pikafs Env named " + name + " in this process";
            return nullptr;
          }
          return it->second;
        });
  });
}

}  // namespace
}  // namespace pikafs

extern "C" void* pikafs_env_create(const pikafs_callbacks* cb,
                                   const char* prefix, size_t prefix_len,
                                   const char* name, size_t name_len) {
  std::shared_ptr<pikafs::PikaFileSystem> fs;
  try {
    fs = std::make_shared<pikafs::PikaFileSystem>(
        *cb, std::string(prefix, prefix_len));
  } catch (...) {
    cb->drop_ctx(cb->ctx);
    return nullptr;
  }
  try {
    std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
    fs.reset();  // the Env holds it now; its destructor frees the context
    auto* raw = new rocksdb_env_t{env.get(), false};
    rocksdb::Env* rep = env.release();
    pikafs::RegisterFactoryOnce();
    {
      std::lock_guard<std::mutex> g(pikafs::RegistryMu());
      pikafs::Registry()[std::string(name, name_len)] = rep;
    }
    return raw;
  } catch (...) {
    return nullptr;
  }
}

extern "C" void pikafs_env_unregister(const char* name, size_t name_len,
                                      void* env) {
  try {
    auto* raw = static_cast<rocksdb_env_t*>(env);
    std::lock_guard<std::mutex> g(pikafs::RegistryMu());
    auto it = pikafs::Registry().find(std::string(name, name_len));
    if (it != pikafs::Registry().end() && it->second == raw->rep) {
      pikafs::Registry().erase(it);
    }
  } catch (...) {
  }
}
