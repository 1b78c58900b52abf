#include "pipeline/error_policy.hpp"

namespace evp::pipeline {

StoreErrorKind ClassifySqlState(const std::string& sqlstate) {
  const std::string cls = sqlstate.substr(0, 2);
  if (cls == "22" || cls == "23") return StoreErrorKind::kFatal;
  return StoreErrorKind::kTransient;
}

}  // namespace evp::pipeline
