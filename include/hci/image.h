// ImageBackend: import, convert and checksum disk images.
#pragma once

#include "hci/backend.h"
#include "hci/export.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/v1/image.pb.h"

namespace hci {

/// The host's image store. Image names are RFC 1123 labels (validated by the core).
class HCI_EXPORT ImageBackend : public Backend {
 public:
  ~ImageBackend() override;

  /// What this backend implements (sources, formats, checksums). Cheap and constant for the
  /// backend's lifetime.
  virtual v1::ImageCapabilities Capabilities() const = 0;

  /// Starts importing an image: a long operation with progress in bytes received. Idempotent by
  /// name: importing the same spec again returns the running or finished import; a different
  /// spec gives AlreadyExists. A sha256 mismatch fails the operation with DataLoss and keeps
  /// nothing.
  virtual Result<Operation> ImportImage(const v1::ImportImageRequest& request) = 0;
  /// NotFound when there is no such image. Also the way to follow an import's phase.
  virtual Result<v1::Image> GetImage(const v1::GetImageRequest& request) = 0;
  /// The images carrying every label of `label_selector` (all images when it is empty).
  virtual Result<v1::ListImagesResponse> ListImages(const v1::ListImagesRequest& request) = 0;
  /// OK when it does not exist. FailedPrecondition while a volume depends on it.
  virtual Status DeleteImage(const v1::DeleteImageRequest& request) = 0;
};

}  // namespace hci
