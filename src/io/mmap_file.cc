#include "io/mmap_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace sdserve {

namespace {

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void throw_os(const std::string& path, const char* what, int err) {
  const std::string msg = path + ": " + what + ": " + std::strerror(err);
  if (err == ENOENT || err == ENOTDIR) throw NotFoundError(path + ": no such file");
  throw IoError(msg);
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd;
  do {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is rejected below instead.
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    if (err == EISDIR) throw IoError(path + ": is a directory, not a file");
    throw_os(path, "cannot open", err);
  }
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_os(path, "cannot stat", errno);
  if (S_ISDIR(st.st_mode)) throw IoError(path + ": is a directory, not a file");
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": is not a regular file");

  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (f->size_ == 0) return f;  // mmap of 0 bytes fails; callers see size() == 0
  // MAP_PRIVATE + PROT_WRITE: the file is never modified, but a caller that writes into a weight
  // view (e.g. merging a LoRA in place) gets a private copy-on-write page instead of a SIGSEGV.
  // MAP_NORESERVE keeps the mapping out of the commit charge until pages are actually written.
  void* p = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) throw_os(path, "cannot mmap", errno);
  f->data_ = static_cast<uint8_t*>(p);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

void MappedFile::advise_willneed(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  const size_t start = offset / page * page;  // madvise wants a page-aligned address
  ::madvise(data_ + start, offset + length - start, MADV_WILLNEED);
}

void MappedFile::advise_sequential() const {
  if (data_ != nullptr) ::madvise(data_, size_, MADV_SEQUENTIAL);
}

}  // namespace sdserve
