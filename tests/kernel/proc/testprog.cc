// A small real program for the ELF loader tests: built twice in the tree, as a static executable
// and as a static PIE, so the loader sees ET_EXEC and ET_DYN files with code, read-only data,
// initialised data and bss.
#include <cstdio>
#include <cstring>

static const char kGreeting[] = "nrx test program";
int counter = 42;               // .data
static char scratch[3 * 4096];  // .bss, several pages

int main(int argc, char** argv) {
  (void)argv;
  std::memset(scratch, argc, sizeof scratch);
  counter += scratch[100];
  std::printf("%s %d\n", kGreeting, counter);
  return 0;
}
