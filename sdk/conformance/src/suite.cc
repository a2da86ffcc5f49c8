// The Suite: registers the checks with GoogleTest and reads their results back for the matrix.
#include <iostream>

#include "conformance_internal.h"

namespace hci::conformance {

namespace internal {
namespace {

// One registered check: runs its body with a fresh context, then removes what the body created,
// whatever happened; prints the captured log lines when it failed.
class KitTest final : public testing::Test {
 public:
  KitTest(Env& env, Body body) : env_(env), body_(std::move(body)) {}

  void TestBody() override {
    env_.logs->Take();  // lines of earlier tests and of setup
    Context ctx(env_);
    try {
      body_(ctx);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "the check threw: " << e.what();
    } catch (...) {
      ADD_FAILURE() << "the check threw a non-standard exception";
    }
    for (const auto& problem : ctx.tracker.CleanUp()) {
      ADD_FAILURE() << "resource tracker: " << problem;
    }
    if (HasFailure()) {
      auto lines = env_.logs->Take();
      if (!lines.empty()) {
        std::cout << "--- log of this check (libhci and the plugin):\n";
        for (const auto& line : lines) std::cout << "    " << line << "\n";
        std::cout << "---" << std::endl;
      }
    }
  }

 private:
  Env& env_;
  Body body_;
};

}  // namespace
}  // namespace internal

struct Suite::Impl {
  std::unique_ptr<internal::Env> env;
  bool registered = false;
  ~Impl() {
    if (env) internal::DestroyEnv(*env);
  }
};

Suite::Suite(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Suite::~Suite() = default;

Result<std::unique_ptr<Suite>> Suite::Create(const Options& options) {
  auto impl = std::make_unique<Impl>();
  HCI_ASSIGN_OR_RAISE(impl->env, internal::MakeEnv(options));
  return std::unique_ptr<Suite>(new Suite(std::move(impl)));
}

const v1::PluginInfo& Suite::plugin() const { return impl_->env->plugin; }

void Suite::RegisterTests() {
  if (impl_->registered) return;
  impl_->registered = true;
  internal::Env& env = *impl_->env;
  std::vector<internal::TestDef> defs;
  internal::AddCommonTests(env, defs);
  if (env.load_error.ok()) {
    if (env.tested(BackendKind::kCompute)) internal::AddComputeTests(env, defs);
    if (env.tested(BackendKind::kStorage)) internal::AddStorageTests(env, defs);
    if (env.tested(BackendKind::kNetwork)) internal::AddNetworkTests(env, defs);
    if (env.tested(BackendKind::kImage)) internal::AddImageTests(env, defs);
    if (env.tested(BackendKind::kBackup)) internal::AddBackupTests(env, defs);
    internal::AddCleanupTests(env, defs);
  }
  for (auto& def : defs) {
    env.test_ops[def.suite + "." + def.name] = def.ops;
    internal::Env* e = &env;
    internal::Body body = std::move(def.body);
    testing::RegisterTest(
        def.suite.c_str(), def.name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
        [e, body]() -> testing::Test* { return new internal::KitTest(*e, body); });
  }
}

PluginMatrix Suite::Matrix() const {
  const internal::Env& env = *impl_->env;
  std::map<std::string, internal::TestOutcome> outcomes;
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const testing::TestSuite& suite = *unit.GetTestSuite(i);
    for (int j = 0; j < suite.total_test_count(); ++j) {
      const testing::TestInfo& info = *suite.GetTestInfo(j);
      std::string name = std::string(info.test_suite_name()) + "." + info.name();
      if (env.test_ops.count(name) == 0) continue;  // not one of ours
      internal::TestOutcome outcome;
      outcome.ran = info.should_run();
      outcome.failed = info.result()->Failed();
      outcome.skipped = info.result()->Skipped();
      outcomes[name] = outcome;
    }
  }
  return internal::ComputeMatrix(env, outcomes);
}

}  // namespace hci::conformance
