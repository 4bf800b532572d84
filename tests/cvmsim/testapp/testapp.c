// Tiny static test service packed into a FROM-scratch OCI image by the cvmsim tests.
// On start: bumps a boot counter in $DATA_DIR/counter (a named volume), prints a line, then serves TCP $PORT:
// each connection gets one line "hello <GREETING> boots=<n> netns=<inode> sock=<0|1> pid=<pid>" and is closed.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char* env_or(const char* name, const char* def) {
  const char* v = getenv(name);
  return v && *v ? v : def;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char* dir = env_or("DATA_DIR", "/data");
  char path[512];
  snprintf(path, sizeof path, "%s/counter", dir);
  long boots = 0;
  FILE* f = fopen(path, "r");
  if (f) { if (fscanf(f, "%ld", &boots) != 1) boots = 0; fclose(f); }
  boots++;
  f = fopen(path, "w");
  if (f) { fprintf(f, "%ld\n", boots); fclose(f); }
  char netns[128] = "?";
  ssize_t n = readlink("/proc/self/ns/net", netns, sizeof netns - 1);
  if (n > 0) netns[n] = 0;
  struct stat st;
  int sock = stat("/var/run/dstack.sock", &st) == 0 && S_ISSOCK(st.st_mode);
  int port = atoi(env_or("PORT", "8080"));
  printf("testapp starting greeting=%s boots=%ld port=%d\n", env_or("GREETING", "-"), boots, port);
  if (boots == 1 && getenv("CRASH_FIRST")) { printf("testapp crashing on purpose\n"); return 3; }
  signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(s, (struct sockaddr*)&a, sizeof a) != 0 || listen(s, 64) != 0) { perror("testapp bind"); return 1; }
  printf("testapp listening on 0.0.0.0:%d\n", port);
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    char buf[512];
    int len = snprintf(buf, sizeof buf, "hello %s boots=%ld netns=%s sock=%d pid=%d\n", env_or("GREETING", "-"),
                       boots, netns, sock, (int)getpid());
    if (write(c, buf, (size_t)len) < 0) perror("testapp write");
    close(c);
  }
}
