// C++ std::thread workers (the thread starts in libstdc++, which calls the lambda): each of
// 4 workers calls cxx_step 1000 times. Deterministic output.
#include <cstdio>
#include <thread>
#include <vector>

extern "C" __attribute__((noinline, noipa)) long cxx_step(long k) { return k * 5 + 2; }

int main() {
    std::vector<std::thread> workers;
    long results[4] = {0};
    for (int i = 0; i < 4; i++)
        workers.emplace_back([i, &results] {
            long sum = 0;
            for (long k = 0; k < 1000; k++) sum += cxx_step(k + i);
            results[i] = sum;
        });
    for (auto &t : workers) t.join();
    for (long r : results) std::printf("%ld\n", r);
    return 0;
}
