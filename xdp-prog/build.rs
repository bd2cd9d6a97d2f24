//! Compiles `src/bpf/canvas.bpf.c` with the system clang and generates two libbpf-rs skeletons in
//! `OUT_DIR` (never committed): `canvas` (no kfunc: loads on any kernel with XDP and BTF-less
//! kernels too) and `canvas_vlanmeta` (`-DCANVAS_VLAN_METADATA`: reads stripped VLAN tags through
//! the `bpf_xdp_metadata_rx_vlan_tag` kfunc; needs kernel BTF, loaded device-bound). And
//! `src/bpf/steer.bpf.c`, the io_uring mode's reuseport program, into the `steer` skeleton.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/canvas.bpf.c";
const STEER_SRC: &str = "src/bpf/steer.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // bpf/bpf_helpers.h & co. come from libbpf-sys (libbpf-cargo puts them on the include path);
    // linux/*.h from the system's kernel UAPI headers (linux-libc-dev, which libc6-dev pulls in).
    let mut clang_args: Vec<String> = vec!["-Wall".into(), "-Werror".into()];
    // `-target bpf` drops the multiarch include directory; linux/types.h needs its asm/types.h.
    if let Some(dir) = multiarch_include_dir() {
        clang_args.push(format!("-I{}", dir.display()));
    }

    build(&out, SRC, "canvas", &clang_args);
    let mut meta_args = clang_args.clone();
    meta_args.push("-DCANVAS_VLAN_METADATA".into());
    build(&out, SRC, "canvas_vlanmeta", &meta_args);
    build(&out, STEER_SRC, "steer", &clang_args);

    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={STEER_SRC}");
}

fn build(out: &Path, src: &str, name: &str, clang_args: &[String]) {
    let obj = out.join(format!("{name}.bpf.o"));
    let skel = out.join(format!("{name}.skel.rs"));
    if let Err(e) =
        SkeletonBuilder::new().source(src).obj(&obj).clang_args(clang_args).build_and_generate(&skel)
    {
        panic!("building the {name} BPF skeleton from {src} failed (is clang installed?): {e:#}");
    }
}

/// `/usr/include/<arch>-linux-gnu` (Debian/Ubuntu multiarch), when it exists.
fn multiarch_include_dir() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let env_abi = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let triple = format!("{arch}-linux-{}", if env_abi.is_empty() { "gnu" } else { &env_abi });
    let dir = Path::new("/usr/include").join(triple);
    dir.join("asm").is_dir().then_some(dir)
}
