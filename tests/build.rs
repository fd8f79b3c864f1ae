//! Marks the grpcurl tests ignored ("ignored, grpcurl is not installed" in
//! the test summary) when grpcurl cannot be found, so a missing tool shows
//! as a skip rather than a pass. Under CI (`CI` set) they always run, and
//! fail without grpcurl. Likewise the membership tests and etcd.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(no_grpcurl)");
    println!("cargo:rustc-check-cfg=cfg(no_etcd)");
    println!("cargo:rerun-if-env-changed=ETCD");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=GRPCURL");
    println!("cargo:rerun-if-env-changed=CI");
    // Installing Debian's etcd-server later must un-ignore the tests.
    println!("cargo:rerun-if-changed=/usr/bin/etcd");
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let given = std::env::var_os("GRPCURL").is_some_and(|v| !v.is_empty());
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("grpcurl").is_file())
    });
    if !ci && !given && !on_path {
        println!("cargo:rustc-cfg=no_grpcurl");
    }
    // The same for the membership tests and Debian's etcd-server.
    let etcd = std::env::var_os("ETCD").is_some_and(|v| !v.is_empty())
        || std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join("etcd").is_file())
        })
        || std::path::Path::new("/usr/bin/etcd").is_file();
    if !ci && !etcd {
        println!("cargo:rustc-cfg=no_etcd");
    }
}
