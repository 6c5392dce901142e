// The C ABI between the C++ FileSystem shim (shim.cc) and Rust (src/ffi.rs).
//
// Rust hands the shim a table of callbacks plus an opaque context; the shim
// never links against Rust symbols, so link order between the shim archive
// and the Rust rlib does not matter. Keep this file and `src/ffi.rs` in
// lock step: the layouts are repeated there by hand.
#ifndef PIKAFS_ROCKSFS_SHIM_H
#define PIKAFS_ROCKSFS_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Status codes every callback returns; the message (NUL-terminated, at
// most PIKAFS_ERR_CAP bytes with the NUL) is written to `err` on failure.
enum {
  PIKAFS_OK = 0,
  PIKAFS_NOT_FOUND = 1,
  PIKAFS_NO_SPACE = 2,
  PIKAFS_IO_ERROR = 3,
  PIKAFS_NOT_SUPPORTED = 4,
  PIKAFS_INVALID_ARGUMENT = 5,
  PIKAFS_FENCED = 6,
};

#define PIKAFS_ERR_CAP 512

// How `open` treats the file.
enum {
  PIKAFS_OPEN_READ = 0,      // existing file, read only
  PIKAFS_OPEN_TRUNCATE = 1,  // create or cut to zero, writable
  PIKAFS_OPEN_APPEND = 2,    // create if missing, keep contents, writable
};

// Called by `readdir` once per entry, with the entry's name.
typedef void (*pikafs_push_fn)(void* out, const char* name, size_t name_len,
                               uint64_t size, int32_t is_dir);

// Paths are fs paths (prefix already stripped), not NUL-terminated.
typedef struct pikafs_callbacks {
  void* ctx;
  int32_t (*open)(void* ctx, const char* path, size_t path_len, int32_t how,
                  uint64_t* handle, uint64_t* size, char* err);
  int32_t (*close)(void* ctx, uint64_t handle, char* err);
  int32_t (*pread)(void* ctx, uint64_t handle, uint64_t offset, char* buf,
                   size_t len, size_t* got, char* err);
  int32_t (*pwrite)(void* ctx, uint64_t handle, uint64_t offset,
                    const char* data, size_t len, char* err);
  int32_t (*truncate)(void* ctx, uint64_t handle, uint64_t size, char* err);
  int32_t (*fsync)(void* ctx, uint64_t handle, char* err);
  int32_t (*fallocate)(void* ctx, uint64_t handle, uint64_t offset,
                       uint64_t len, char* err);
  int32_t (*stat)(void* ctx, const char* path, size_t path_len,
                  uint64_t* size, uint64_t* mtime_ns, int32_t* is_dir,
                  char* err);
  int32_t (*readdir)(void* ctx, const char* path, size_t path_len, void* out,
                     pikafs_push_fn push, char* err);
  int32_t (*unlink)(void* ctx, const char* path, size_t path_len, char* err);
  int32_t (*mkdir)(void* ctx, const char* path, size_t path_len,
                   int32_t if_missing, char* err);
  int32_t (*rmdir)(void* ctx, const char* path, size_t path_len, char* err);
  int32_t (*rename)(void* ctx, const char* from, size_t from_len,
                    const char* to, size_t to_len, char* err);
  int32_t (*truncate_path)(void* ctx, const char* path, size_t path_len,
                           uint64_t size, char* err);
  int32_t (*sync_all)(void* ctx, char* err);
  int32_t (*free_space)(void* ctx, uint64_t* free_bytes, char* err);
  int32_t (*lock)(void* ctx, const char* path, size_t path_len, char* err);
  int32_t (*unlock)(void* ctx, const char* path, size_t path_len, char* err);
  // Frees `ctx`; called exactly once, when the FileSystem is destroyed.
  void (*drop_ctx)(void* ctx);
} pikafs_callbacks;

// Builds the FileSystem and a composite Env over it and returns it as the
// C API's `rocksdb_env_t` (owned by the caller, freed with
// `rocksdb_env_destroy`), or NULL on failure. `cb->ctx` is owned by the
// shim from this call on, whatever the outcome. `name` is the key under
// which `env=pikafs:<name>` finds this Env in an options string.
void* pikafs_env_create(const pikafs_callbacks* cb, const char* prefix,
                        size_t prefix_len, const char* name, size_t name_len);

// Forgets `env` in the options-string registry (no effect if `name` now
// names another Env).
void pikafs_env_unregister(const char* name, size_t name_len, void* env);

#ifdef __cplusplus
}
#endif

#endif
