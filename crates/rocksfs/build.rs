//! Compiles the C++ FileSystem shim against the RocksDB that
//! librocksdb-sys built, with the flags that decide ABI and class layout
//! copied from its build script (see docs/rocksfs.md, "Building the shim").

use std::env;
use std::path::PathBuf;

fn main() {
    // Exported by librocksdb-sys (`links = "rocksdb"`): its source directory.
    let sys_dir = PathBuf::from(
        env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR")
            .expect("librocksdb-sys exports its manifest dir (direct dependency)"),
    );
    let include = sys_dir.join("rocksdb").join("include");
    let target = env::var("TARGET").expect("cargo sets TARGET");

    let mut b = cc::Build::new();
    b.cpp(true)
        .file("cpp/shim.cc")
        .include("cpp")
        .include(&include)
        // Same language level as RocksDB (librocksdb-sys: -std=c++20, or
        // ROCKSDB_CXX_STD): inline and template code in the headers must
        // compile to the same thing in both.
        .flag(cxx_standard())
        // librocksdb-sys defines NDEBUG: the headers have debug-only
        // members, so this changes class layouts.
        .define("NDEBUG", Some("1"))
        .define("HAVE_ALIGNED_NEW", None)
        .flag("-include")
        .flag("cstdint")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true);
    // RocksDB is built with the compiler's default RTTI (on): librocksdb-sys
    // never passes -fno-rtti (its `rtti` feature only sets USE_RTTI, which
    // switches static_cast_with_check to a checked cast in debug builds).
    // Our subclasses must then have typeinfo too, so no -fno-rtti here.
    if !target.contains("msvc") {
        b.define("HAVE_UINT128_EXTENSION", None);
    }
    if target.contains("linux") {
        for d in [
            "OS_LINUX",
            "ROCKSDB_PLATFORM_POSIX",
            "ROCKSDB_LIB_IO_POSIX",
            "ROCKSDB_SCHED_GETCPU_PRESENT",
            "ROCKSDB_AUXV_GETAUXVAL_PRESENT",
            "ROCKSDB_FALLOCATE_PRESENT",
            "ROCKSDB_RANGESYNC_PRESENT",
        ] {
            b.define(d, None);
        }
    } else if target.contains("apple") {
        for d in [
            "OS_MACOSX",
            "ROCKSDB_PLATFORM_POSIX",
            "ROCKSDB_LIB_IO_POSIX",
        ] {
            b.define(d, None);
        }
    }
    b.compile("pikafs_rocksfs_shim");

    println!("cargo:rerun-if-changed=cpp/shim.cc");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-env-changed=ROCKSDB_CXX_STD");
}

fn cxx_standard() -> String {
    env::var("ROCKSDB_CXX_STD").map_or("-std=c++20".to_owned(), |s| {
        if s.starts_with("-std=") {
            s
        } else {
            format!("-std={s}")
        }
    })
}
