//! TEST DOUBLE standing in for `kubeadm` (no package registry here ships it); it follows the
//! documented behaviour of reference §6.1. The logic is in `nodeimg_tests::kubeadm_double`.
//! Tests put this binary on PATH under the name `kubeadm` or pass its path to nodeboot.

fn main() -> std::process::ExitCode {
    nodeimg_tests::kubeadm_double::main()
}
