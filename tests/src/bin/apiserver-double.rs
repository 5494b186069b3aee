//! TEST DOUBLE standing in for `kube-apiserver` (no package registry here ships it); the kubelet
//! double runs it from kubeadm's static pod manifest. The logic is in
//! `nodeimg_tests::apiserver_double`.

fn main() -> std::process::ExitCode {
    nodeimg_tests::apiserver_double::main()
}
