fn main() {
    std::process::exit(podnet::cni::main());
}
