// A minimal HTTP/1.1 file server (Boost.Beast) for the URL-import checks: one thread, one
// request per connection, files of one directory only.
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <thread>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

class BeastFileServer final : public HttpFileServer {
 public:
  explicit BeastFileServer(std::string root) : root_(std::move(root)), acceptor_(ioc_) {}

  ~BeastFileServer() override {
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Status Start() {
    beast::error_code ec;
    tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Unavailable("listening on 127.0.0.1: " + ec.message());
    port_ = acceptor_.local_endpoint().port();
    Accept();
    thread_ = std::thread([this] { ioc_.run(); });
    return Status();
  }

  std::string base_url() const override {
    return "http://127.0.0.1:" + std::to_string(port_) + "/";
  }

 private:
  void Accept() {
    acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec) return;  // stopped
      Serve(socket);
      Accept();
    });
  }

  // Synchronous on the server's thread: the kit's imports are few and small.
  void Serve(tcp::socket& socket) {
    beast::error_code ec;
    beast::flat_buffer buffer;
    http::request<http::empty_body> request;
    http::read(socket, buffer, request, ec);
    if (ec) return;
    std::string target(request.target());
    std::string name = target.substr(target.find_last_of('/') + 1);
    std::filesystem::path file = std::filesystem::path(root_) / name;
    http::file_body::value_type body;
    bool found = !name.empty() && name.find("..") == std::string::npos &&
                 (request.method() == http::verb::get || request.method() == http::verb::head);
    if (found) {
      body.open(file.c_str(), beast::file_mode::scan, ec);
      found = !ec;
    }
    if (!found) {
      http::response<http::string_body> response{http::status::not_found, request.version()};
      response.set(http::field::content_type, "text/plain");
      response.keep_alive(false);
      response.body() = "not found\n";
      response.prepare_payload();
      http::write(socket, response, ec);
    } else if (request.method() == http::verb::head) {
      http::response<http::empty_body> response{http::status::ok, request.version()};
      response.set(http::field::content_type, "application/octet-stream");
      response.content_length(body.size());
      response.keep_alive(false);
      http::write(socket, response, ec);
    } else {
      auto size = body.size();
      http::response<http::file_body> response{
          std::piecewise_construct, std::make_tuple(std::move(body)),
          std::make_tuple(http::status::ok, request.version())};
      response.set(http::field::content_type, "application/octet-stream");
      response.content_length(size);
      response.keep_alive(false);
      http::write(socket, response, ec);
    }
    socket.shutdown(tcp::socket::shutdown_send, ec);
  }

  std::string root_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  unsigned short port_ = 0;
  std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<HttpFileServer>> StartHttpFileServer(const std::string& root) {
  auto server = std::make_unique<BeastFileServer>(root);
  HCI_RETURN_NOT_OK(server->Start());
  return std::unique_ptr<HttpFileServer>(std::move(server));
}

}  // namespace hci::conformance::internal
