// Image checks: file and URL imports, checksums, images in use, idempotency, bad requests,
// races.
#include <algorithm>
#include <filesystem>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

std::string Op(std::string_view op) { return OpKey(BackendKind::kImage, op); }

ImageBackend& I(Context& ctx) { return *ctx.env.image; }

Result<v1::Image> GetImage(Context& ctx, const std::string& name) {
  v1::GetImageRequest r;
  r.set_name(name);
  return I(ctx).GetImage(r);
}
Status DeleteImage(Context& ctx, const std::string& name) {
  v1::DeleteImageRequest r;
  r.set_name(name);
  return I(ctx).DeleteImage(r);
}
Result<Operation> Import(Context& ctx, const v1::ImportImageRequest& request) {
  ctx.tracker.Image(request.metadata().name());
  auto op = I(ctx).ImportImage(request);
  if (op.ok()) ctx.tracker.Op(*op);
  return op;
}

int CountListed(Context& ctx, const std::string& name) {
  auto list = I(ctx).ListImages({});
  if (!list.ok()) return -1;
  return static_cast<int>(
      std::count_if(list->images().begin(), list->images().end(),
                    [&](const auto& i) { return i.metadata().name() == name; }));
}

testing::AssertionResult Absent(Context& ctx, const std::string& name) {
  auto i = GetImage(ctx, name);
  if (i.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "image " << name << " exists (GetImage answers " << i.status() << ")";
}

bool IsSha256(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The checks every successful import must pass.
void ExpectReady(Context& ctx, const v1::Image& image) {
  EXPECT_EQ(image.status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_FALSE(image.metadata().uid().empty());
  if (ctx.env.image_caps.checksum()) {
    EXPECT_TRUE(IsSha256(image.status().sha256()))
        << "checksum is claimed: status.sha256 of a Ready image is 64 lowercase hex digits, got \""
        << image.status().sha256() << "\"";
  }
  auto stored = ctx.env.image_caps.stored_format();
  if (stored != v1::IMAGE_FORMAT_UNSPECIFIED) {
    EXPECT_EQ(image.status().stored_format(), stored)
        << "status.stored_format differs from the capability's stored_format";
  }
  if (ctx.env.image_caps.local_path()) {
    // Storage plugins of the same host open it to fill volumes from the image.
    const std::filesystem::path path(image.status().path());
    std::error_code ec;
    EXPECT_TRUE(path.is_absolute() && std::filesystem::is_regular_file(path, ec))
        << "local_path is claimed: status.path of a Ready image is the absolute path of a regular "
           "file, got \""
        << image.status().path() << "\"";
  } else {
    EXPECT_TRUE(image.status().path().empty())
        << "status.path is set but the capability local_path is not claimed";
  }
}

void ExpectImportRefused(Context& ctx, const std::function<void(v1::ImportImageRequest&)>& edit,
                         StatusCode code, std::vector<std::string> fields) {
  auto request = ctx.ImageRequest(ctx.Name("bad"));
  edit(request);
  auto op = Import(ctx, request);
  if (code == StatusCode::kInvalidArgument) {
    EXPECT_TRUE(NamesField(op.status(), fields));
  } else {
    EXPECT_TRUE(HasCode(op, code));
  }
  if (IsValidName(request.metadata().name())) {
    EXPECT_TRUE(Absent(ctx, request.metadata().name()));
  }
}

}  // namespace

void AddImageTests(Env& env, std::vector<TestDef>& tests) {
  const auto& caps = env.image_caps;
  const int repeat = env.fixtures.repeat;
  const int threads = env.fixtures.concurrency;
  const std::string lifecycle = "ImageLifecycle";
  const std::string capabilities = "ImageCapabilities";

  struct Source {
    const char* name;
    bool claimed;
    bool url;
  };
  for (const Source& source :
       {Source{"File", caps.import_file(), false}, Source{"Url", caps.import_url(), true}}) {
    const bool url = source.url;
    if (source.claimed) {
      tests.push_back(
          {lifecycle,
           std::string("Import") + source.name,
           {Op("ImportImage"), Op("GetImage"), Op("ListImages"), Op("DeleteImage")},
           [url](Context& ctx) {
             std::string name = ctx.Name("img");
             auto request = url ? ctx.ImageUrlRequest(name) : ctx.ImageFileRequest(name);
             CONF_ASSIGN_OR_FAIL(auto op, Import(ctx, request));
             EXPECT_TRUE(op.valid());
             ASSERT_TRUE(IsOk(ctx.Wait(op))) << "the ImportImage operation";
             EXPECT_EQ(op.status().phase(), v1::OPERATION_PHASE_SUCCEEDED);
             CONF_ASSIGN_OR_FAIL(auto image, GetImage(ctx, name));
             ExpectReady(ctx, image);
             EXPECT_EQ(CountListed(ctx, name), 1);
             v1::ListImagesRequest selected;
             (*selected.mutable_label_selector())["hci-conformance"] = "no-such-run";
             CONF_ASSIGN_OR_FAIL(auto other, I(ctx).ListImages(selected));
             EXPECT_FALSE(std::any_of(other.images().begin(), other.images().end(),
                                      [&](const auto& i) { return i.metadata().name() == name; }));
             EXPECT_TRUE(IsOk(DeleteImage(ctx, name)));
             EXPECT_TRUE(Absent(ctx, name));
           }});
    } else {
      tests.push_back({capabilities,
                       std::string("Import") + source.name + "Unimplemented",
                       {Op("ImportImage")},
                       [url](Context& ctx) {
                         std::string name = ctx.Name("img");
                         auto request =
                             url ? ctx.ImageUrlRequest(name) : ctx.ImageFileRequest(name);
                         EXPECT_TRUE(HasCode(Import(ctx, request), StatusCode::kUnimplemented));
                         EXPECT_TRUE(Absent(ctx, name));
                       }});
    }
  }

  if (caps.checksum()) {
    tests.push_back({lifecycle, "Checksum", {Op("ImportImage")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto plain, ctx.NewImage("sum"));
                       const std::string sha = plain.status().sha256();
                       ASSERT_TRUE(IsSha256(sha)) << "status.sha256 \"" << sha << "\"";
                       auto verified = ctx.ImageRequest(ctx.Name("sum-ok"));
                       verified.mutable_spec()->set_sha256(sha);
                       CONF_ASSIGN_OR_FAIL(auto image, ctx.NewImage(verified));
                       EXPECT_EQ(image.status().sha256(), sha);
                       // Documented: a mismatch fails the operation with DataLoss and keeps
                       // nothing.
                       auto wrong = ctx.ImageRequest(ctx.Name("sum-bad"));
                       wrong.mutable_spec()->set_sha256(
                           std::string(64, sha.front() == '0' ? '1' : '0'));
                       CONF_ASSIGN_OR_FAIL(auto op, Import(ctx, wrong));
                       EXPECT_TRUE(HasCode(ctx.Wait(op), StatusCode::kDataLoss))
                           << "the import of an image whose SHA-256 differs from spec.sha256";
                       auto after = GetImage(ctx, wrong.metadata().name());
                       if (after.ok()) {
                         EXPECT_EQ(after->status().phase(), v1::IMAGE_PHASE_FAILED)
                             << "an image whose checksum did not match must not be usable";
                       } else {
                         EXPECT_TRUE(HasCode(after, StatusCode::kNotFound));
                       }
                     }});
    tests.push_back(
        {"ImageNegative", "ImportImage_spec_sha256", {Op("ImportImage")}, [](Context& ctx) {
           ExpectImportRefused(ctx, [](auto& r) { r.mutable_spec()->set_sha256("xyz"); },
                               StatusCode::kInvalidArgument, {"spec.sha256"});
         }});
  } else {
    tests.push_back({capabilities, "ChecksumUnimplemented", {Op("ImportImage")}, [](Context& ctx) {
                       ExpectImportRefused(
                           ctx, [](auto& r) { r.mutable_spec()->set_sha256(std::string(64, 'a')); },
                           StatusCode::kUnimplemented, {});
                     }});
  }

  if (env.storage != nullptr && env.storage_caps.from_image()) {
    tests.push_back({lifecycle, "DeleteImageInUse", {Op("DeleteImage")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto image, ctx.NewImage("used"));
                       const std::string name = image.metadata().name();
                       auto request = ctx.VolumeRequest(ctx.Name("from-img"));
                       request.mutable_spec()->set_size_bytes(0);
                       request.mutable_spec()->mutable_source()->set_image(name);
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.CreateVolume(request));
                       // Documented: FailedPrecondition while a volume depends on it.
                       EXPECT_TRUE(HasCode(DeleteImage(ctx, name), StatusCode::kFailedPrecondition))
                           << "DeleteImage of an image a volume was made from";
                       CONF_ASSIGN_OR_FAIL(auto still, GetImage(ctx, name));
                       EXPECT_EQ(still.status().phase(), v1::IMAGE_PHASE_READY);
                       v1::DeleteVolumeRequest del;
                       del.set_name(volume.metadata().name());
                       CONF_ASSERT_OK(ctx.env.storage->DeleteVolume(del));
                       EXPECT_TRUE(IsOk(DeleteImage(ctx, name)));
                       EXPECT_TRUE(Absent(ctx, name));
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Idempotency

  tests.push_back({"ImageIdempotency", "ImportImage", {Op("ImportImage")}, [repeat](Context& ctx) {
                     auto request = ctx.ImageRequest(ctx.Name("img"));
                     CONF_ASSIGN_OR_FAIL(auto first, ctx.NewImage(request));
                     for (int i = 1; i < repeat; ++i) {
                       auto op = Import(ctx, request);
                       ASSERT_TRUE(IsOk(op)) << "ImportImage with the same spec, try " << i + 1;
                       EXPECT_TRUE(IsOk(ctx.Wait(*op)))
                           << "the repeated import's operation, try " << i + 1;
                     }
                     CONF_ASSIGN_OR_FAIL(auto now, GetImage(ctx, request.metadata().name()));
                     EXPECT_EQ(now.metadata().uid(), first.metadata().uid())
                         << "a repeated import made a new image";
                     EXPECT_EQ(now.status().phase(), v1::IMAGE_PHASE_READY);
                     EXPECT_EQ(CountListed(ctx, request.metadata().name()), 1);
                     auto other = request;
                     other.mutable_spec()->set_display_name("another spec");
                     EXPECT_TRUE(HasCode(I(ctx).ImportImage(other), StatusCode::kAlreadyExists))
                         << "ImportImage of an existing name with another spec";
                   }});

  tests.push_back({"ImageIdempotency", "DeleteImage", {Op("DeleteImage")}, [repeat](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto image, ctx.NewImage());
                     for (int i = 0; i < repeat; ++i) {
                       EXPECT_TRUE(IsOk(DeleteImage(ctx, image.metadata().name())))
                           << "DeleteImage, try " << i + 1;
                     }
                     EXPECT_TRUE(Absent(ctx, image.metadata().name()));
                     EXPECT_TRUE(IsOk(DeleteImage(ctx, ctx.Name("never"))));
                   }});

  // ---------------------------------------------------------------------------------------
  // Bad requests

  tests.push_back(
      {"ImageNegative", "ImportImage_metadata_name", {Op("ImportImage")}, [](Context& ctx) {
         ExpectImportRefused(ctx, [](auto& r) { r.mutable_metadata()->set_name(""); },
                             StatusCode::kInvalidArgument, {"metadata.name"});
       }});
  tests.push_back(
      {"ImageNegative", "ImportImage_spec_source", {Op("ImportImage")}, [](Context& ctx) {
         ExpectImportRefused(ctx,
                             [](auto& r) {
                               r.mutable_spec()->clear_url();
                               r.mutable_spec()->clear_file();
                             },
                             StatusCode::kInvalidArgument,
                             {"spec.url", "spec.file", "spec.source"});
       }});
  if (caps.import_file()) {
    tests.push_back(
        {"ImageNegative", "ImportImage_spec_file", {Op("ImportImage")}, [](Context& ctx) {
           ExpectImportRefused(ctx,
                               [](auto& r) { r.mutable_spec()->set_file("relative/image.raw"); },
                               StatusCode::kInvalidArgument, {"spec.file"});
         }});
  }
  if (caps.import_url()) {
    tests.push_back(
        {"ImageNegative", "ImportImage_spec_url", {Op("ImportImage")}, [](Context& ctx) {
           ExpectImportRefused(ctx, [](auto& r) { r.mutable_spec()->set_url("not a url"); },
                               StatusCode::kInvalidArgument, {"spec.url"});
         }});
  }
  for (const char* op : {"GetImage", "DeleteImage"}) {
    std::string o = op;
    tests.push_back({"ImageNegative", o + "_name", {Op(o)}, [o](Context& ctx) {
                       Status s =
                           o == "GetImage" ? GetImage(ctx, "").status() : DeleteImage(ctx, "");
                       EXPECT_TRUE(HasCode(s, StatusCode::kInvalidArgument, "name"));
                     }});
  }
  tests.push_back({"ImageNotFound", "GetImage", {Op("GetImage")}, [](Context& ctx) {
                     EXPECT_TRUE(
                         HasCode(GetImage(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                   }});

  // ---------------------------------------------------------------------------------------
  // Races

  tests.push_back({"ImageConcurrency", "ImportImage", {Op("ImportImage")}, [threads](Context& ctx) {
                     auto request = ctx.ImageRequest(ctx.Name("img"));
                     ctx.tracker.Image(request.metadata().name());
                     bool slowed = SlowNextCall(ctx.env.image, "ImportImage");
                     auto results = ctx.Race<Result<Operation>>(
                         threads, [&](int) { return I(ctx).ImportImage(request); });
                     ClearFaults(ctx.env.image);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     for (const auto& r : results) {
                       if (!r.ok()) continue;
                       ctx.tracker.Op(*r);
                       EXPECT_TRUE(IsOk(ctx.Wait(*r))) << "an import that answered OK";
                     }
                     CONF_ASSIGN_OR_FAIL(auto image, GetImage(ctx, request.metadata().name()));
                     ExpectReady(ctx, image);
                     EXPECT_EQ(CountListed(ctx, request.metadata().name()), 1);
                   }});
  tests.push_back({"ImageConcurrency", "DeleteImage", {Op("DeleteImage")}, [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto image, ctx.NewImage());
                     const std::string name = image.metadata().name();
                     bool slowed = SlowNextCall(ctx.env.image, "DeleteImage");
                     auto results =
                         ctx.Race<Status>(threads, [&](int) { return DeleteImage(ctx, name); });
                     ClearFaults(ctx.env.image);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     EXPECT_TRUE(Absent(ctx, name));
                   }});
}

}  // namespace hci::conformance::internal
