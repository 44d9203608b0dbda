fn main() {
    std::process::exit(podnet::daemon::main());
}
