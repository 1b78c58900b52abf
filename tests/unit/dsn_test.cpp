// POSTGRES_DSN is checked when the service starts, without reaching a server.
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

// libpq checks these values only when it connects; unchecked, a typo made the service retry
// "PostgreSQL not ready" forever.
TEST(DsnError, RefusesOptionValuesLibpqWouldRefuseWhenConnecting) {
  const std::string sslmode = DsnError("postgresql://u:s3cret@db:5432/events?sslmode=requir");
  EXPECT_NE(sslmode.find("invalid sslmode value"), std::string::npos) << sslmode;
  EXPECT_EQ(sslmode.find("s3cret"), std::string::npos) << sslmode;
  EXPECT_NE(DsnError("host=db target_session_attrs=primary-ish"), "");
  EXPECT_NE(DsnError("host=db gssencmode=maybe"), "");
  EXPECT_NE(DsnError("host=db channel_binding=sometimes"), "");
  const std::string timeout = DsnError("host=db connect_timeout=5s");
  EXPECT_NE(timeout.find("connect_timeout"), std::string::npos) << timeout;
  EXPECT_NE(DsnError("host=db keepalives_idle=abc"), "");
  EXPECT_NE(DsnError("host=db1,db2 port=5432,5433,5434"), "");
  // Valid values, several hosts, a Unix socket directory and no host at all pass.
  EXPECT_EQ(DsnError("host=db sslmode=verify-full target_session_attrs=read-write"), "");
  EXPECT_EQ(DsnError("host=db1,db2 port=5432,5433 connect_timeout=5 keepalives_idle=30"), "");
  EXPECT_EQ(DsnError("host=/var/run/postgresql dbname=events"), "");
  EXPECT_EQ(DsnError("dbname=events"), "");
}

}  // namespace
}  // namespace evp::postgres
