// The message of what a call throws, for tests that check error texts.
#pragma once
#include <exception>
#include <string>

namespace cm::test {

// e.what() of the std::exception `f` throws; "<no exception>" when it returns normally.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no exception>";
}

}  // namespace cm::test
