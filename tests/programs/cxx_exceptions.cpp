// A C++ program that throws exceptions through native code (libstdc++, libc's qsort)
// and catches them in its own frames; its exit status says how many it caught (the loop's
// ten apart).
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <cstdlib>
#include <algorithm>
#include <vector>
struct Thrower : std::streambuf {
  int_type underflow() override { throw std::runtime_error("from underflow"); }
};
static int cmp(const void* a, const void* b) {
  int x = *(const int*)a, y = *(const int*)b;
  if (x == 7 || y == 7) throw std::invalid_argument("seven");
  return x - y;
}
int main() {
  int caught = 0;
  try {
    Thrower t; std::istream in(&t); in.exceptions(std::ios::badbit);
    int v; in >> v;
  } catch (const std::exception& e) { std::cout << "caught: " << e.what() << "\n"; caught++; }
  int a[] = {9, 3, 7, 1};
  try { qsort(a, 4, sizeof(int), cmp); } catch (const std::invalid_argument& e) { std::cout << "caught: " << e.what() << "\n"; caught++; }
  // The same throws again and again: from the third call on, translated code calls
  // qsort and libstdc++'s thrower for real (a bound PLT slot), and the unwinder meets the
  // return addresses of those calls.
  int again = 0;
  for (int i = 0; i < 5; i++) {
    int b[] = {9, 3, 7, 1};
    try { qsort(b, 4, sizeof(int), cmp); } catch (const std::invalid_argument&) { again++; }
    std::vector<int> w(3);
    try { w.at(3 + i) = 1; } catch (const std::out_of_range&) { again++; }
  }
  std::cout << "caught again: " << again << "\n";
  std::vector<int> v = {5, 2, 8};
  std::sort(v.begin(), v.end());
  std::cout << v[0] << v[1] << v[2] << " caught=" << caught << "\n";
  return 40 + caught;
}
