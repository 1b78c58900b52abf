// POSTGRES_DSN is checked when the service starts, without connecting.
#include "postgres/dsn.hpp"

#include <gtest/gtest.h>

namespace evp::postgres {
namespace {

TEST(DsnError, AcceptsTheUriAndKeyValueForms) {
  EXPECT_EQ(DsnError("postgresql://app:s3cret@db:5432/events"), "");
  EXPECT_EQ(DsnError("postgres://db/events?sslmode=require&connect_timeout=5"), "");
  EXPECT_EQ(DsnError("host=db port=5432 dbname=events user=app password=s3cret"), "");
  EXPECT_EQ(DsnError("postgresql://app@db1:5432,db2:5433/events"), "");
}

TEST(DsnError, NamesWhatIsWrongWithoutEchoingTheString) {
  const std::string garbage = DsnError("garbage");
  EXPECT_NE(garbage, "");
  const std::string port = DsnError("postgresql://u:s3cret@h:99999/db");
  EXPECT_NE(port.find("port"), std::string::npos) << port;
  EXPECT_EQ(port.find("s3cret"), std::string::npos) << port;
  const std::string no_scheme = DsnError("app:s3cret@db/events");
  EXPECT_NE(no_scheme, "");
  EXPECT_EQ(no_scheme.find("s3cret"), std::string::npos) << no_scheme;
  EXPECT_NE(DsnError("host=db port=abc"), "");
  EXPECT_NE(DsnError("host=db no_such_option=1"), "");
  EXPECT_NE(DsnError("postgresql://app:s3cret@db:5432/events?bogus=1"), "");
}

}  // namespace
}  // namespace evp::postgres
