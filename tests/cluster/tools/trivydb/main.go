// trivydb builds a Trivy vulnerability database from fixture YAML files (the shape of trivy's
// own integration/testdata/fixtures/db/*.yaml, loaded with the same bolt-fixtures loader trivy's
// tests use) and pushes it as the OCI artifact `trivy --db-repository REF` downloads: a manifest
// whose config has media type application/vnd.aquasec.trivy.config.v1+json and whose single
// layer, application/vnd.aquasec.trivy.db.layer.v1.tar+gzip titled db.tar.gz, holds trivy.db and
// metadata.json. Test infrastructure for tests/cluster (see docs/testing.md).
//
//	trivydb [--out DIR] [--push REGISTRY/REPO:TAG --ca FILE --user U --password P] FIXTURE.yaml...
//
// --out DIR writes trivy.db, metadata.json and db.tar.gz to DIR (DIR can be a Trivy cache's
// `db` directory, used with --skip-db-update). --push pushes the artifact and prints REF@DIGEST.
// --password-env NAME reads the password from the environment instead.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	fixtures "github.com/aquasecurity/bolt-fixtures"
	trivydb "github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/metadata"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What trivy v0.74.0 pulls (pkg/db/db.go dbMediaType; pkg/oci/artifact.go takes the file name
// from the layer's org.opencontainers.image.title annotation) and what the published trivy-db
// artifact carries as its config.
const (
	layerMediaType  = types.MediaType("application/vnd.aquasec.trivy.db.layer.v1.tar+gzip")
	configMediaType = types.MediaType("application/vnd.aquasec.trivy.config.v1+json")
	layerTitle      = "db.tar.gz"
)

func main() {
	out := flag.String("out", "", "write trivy.db, metadata.json and db.tar.gz to this directory")
	push := flag.String("push", "", "push the database to this reference (REGISTRY/REPO:TAG)")
	caFile := flag.String("ca", "", "CA certificate (PEM) the registry's certificate is signed by, in addition to the system's")
	user := flag.String("user", "", "registry username (basic auth)")
	password := flag.String("password", "", "registry password (basic auth)")
	passwordEnv := flag.String("password-env", "", "read the registry password from this environment variable")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: trivydb [--out DIR] [--push REF --ca FILE --user U --password P] FIXTURE.yaml...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 || (*out == "" && *push == "") {
		flag.Usage()
		os.Exit(2)
	}
	if *passwordEnv != "" {
		*password = os.Getenv(*passwordEnv)
	}
	if err := run(*out, *push, *caFile, *user, *password, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "trivydb: %v\n", err)
		os.Exit(1)
	}
}

func run(out, push, caFile, user, password string, fixtureFiles []string) error {
	dir := out
	if dir == "" {
		tmp, err := os.MkdirTemp("", "trivydb-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	archive, err := build(dir, fixtureFiles)
	if err != nil {
		return err
	}
	if out != "" {
		if err := os.WriteFile(filepath.Join(dir, layerTitle), archive, 0o644); err != nil {
			return err
		}
	}
	if push == "" {
		return nil
	}
	digest, err := pushArtifact(push, archive, caFile, user, password)
	if err != nil {
		return fmt.Errorf("pushing to %s: %w", push, err)
	}
	ref, _ := name.ParseReference(push)
	fmt.Printf("%s@%s\n", ref.Context().Name(), digest)
	return nil
}

// build loads the fixtures into DIR/trivy.db, writes DIR/metadata.json and returns db.tar.gz.
func build(dir string, fixtureFiles []string) ([]byte, error) {
	dbPath := trivydb.Path(dir)
	_ = os.Remove(dbPath)
	loader, err := fixtures.New(dbPath, fixtureFiles)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dbPath, err)
	}
	if err := loader.Load(); err != nil {
		_ = loader.Close()
		return nil, fmt.Errorf("loading the fixtures: %w", err)
	}
	if err := loader.Close(); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	meta := metadata.Metadata{
		Version:      trivydb.SchemaVersion,
		NextUpdate:   now.AddDate(100, 0, 0),
		UpdatedAt:    now,
		DownloadedAt: now,
	}
	if err := metadata.NewClient(dir).Update(meta); err != nil {
		return nil, fmt.Errorf("writing metadata.json: %w", err)
	}

	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []string{dbPath, metadata.Path(dir)} {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Name: filepath.Base(f), Mode: 0o644, Size: int64(len(data)), ModTime: now, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// rawManifest is a manifest pushed as written (go-containerregistry's remote.Put takes any
// Taggable; MediaType sets the Content-Type).
type rawManifest struct {
	body      []byte
	mediaType types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mediaType, nil }

// pushArtifact uploads the config ({}) and the db layer, then the manifest (as oras does for
// the published trivy-db), and returns the manifest's digest.
func pushArtifact(refStr string, archive []byte, caFile, user, password string) (string, error) {
	ref, err := name.ParseReference(refStr)
	if err != nil {
		return "", err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return "", err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return "", fmt.Errorf("no certificate in %s", caFile)
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	auth := authn.Anonymous
	if user != "" || password != "" {
		auth = &authn.Basic{Username: user, Password: password}
	}
	opts := []remote.Option{remote.WithTransport(transport), remote.WithAuth(auth)}

	config := static.NewLayer([]byte("{}"), configMediaType)
	layer := static.NewLayer(archive, layerMediaType)
	for _, l := range []v1.Layer{config, layer} {
		if err := remote.WriteLayer(ref.Context(), l, opts...); err != nil {
			return "", err
		}
	}
	descriptor := func(l v1.Layer, mt types.MediaType, annotations map[string]string) (v1.Descriptor, error) {
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		size, err := l.Size()
		if err != nil {
			return v1.Descriptor{}, err
		}
		return v1.Descriptor{MediaType: mt, Digest: d, Size: size, Annotations: annotations}, nil
	}
	configDesc, err := descriptor(config, configMediaType, nil)
	if err != nil {
		return "", err
	}
	layerDesc, err := descriptor(layer, layerMediaType, map[string]string{"org.opencontainers.image.title": layerTitle})
	if err != nil {
		return "", err
	}
	manifest := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        configDesc,
		Layers:        []v1.Descriptor{layerDesc},
		Annotations:   map[string]string{"org.opencontainers.image.created": time.Now().UTC().Format(time.RFC3339)},
	}
	body, err := json.Marshal(manifest)
	if err != nil {
		return "", err
	}
	if err := remote.Put(ref, rawManifest{body, types.OCIManifestSchema1}, opts...); err != nil {
		return "", err
	}
	digest, _, err := v1.SHA256(bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	return digest.String(), nil
}
