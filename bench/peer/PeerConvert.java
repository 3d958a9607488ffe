// The LinuxForHealth hl7v2-fhir-converter on a file of HL7 v2 messages, for bench/peer.py.
// Usage: java -cp LIB/*:. PeerConvert MESSAGES OUT PASSES ZONE
// ZONE is the zone of times without an offset (the converter's ZoneId option). MESSAGES holds the messages separated by a file separator (0x1c). One warm-up pass (the JIT),
// then PASSES timed passes; prints "pass WALL_S CPU_S" per pass, and writes the last pass's result
// per message to OUT, one line each: "OK\t<bundle JSON>" or "ERR\t<exception class>".
import io.github.linuxforhealth.hl7.ConverterOptions;
import io.github.linuxforhealth.hl7.HL7ToFHIRConverter;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

public final class PeerConvert {
  private PeerConvert() {}

  public static void main(String[] args) throws Exception {
    String[] messages = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8).split("\u001c", -1);
    int passes = Integer.parseInt(args[2]);
    HL7ToFHIRConverter converter = new HL7ToFHIRConverter();
    ConverterOptions options = new ConverterOptions.Builder().withZoneIdText(args[3]).build();
    ThreadMXBean threads = ManagementFactory.getThreadMXBean();
    List<String> results = new ArrayList<>();
    for (int pass = 0; pass <= passes; pass++) {
      results.clear();
      long wall = System.nanoTime();
      long cpu = threads.getCurrentThreadCpuTime();
      for (String message : messages) {
        try {
          String bundle = converter.convert(message, options);
          results.add(bundle == null ? "ERR\tnull" : "OK\t" + bundle.replace('\n', ' ').replace('\r', ' '));
        } catch (Exception | StackOverflowError e) {
          results.add("ERR\t" + e.getClass().getSimpleName());
        }
      }
      if (pass > 0) {
        System.out.printf("pass %.4f %.4f%n", (System.nanoTime() - wall) / 1e9,
            (threads.getCurrentThreadCpuTime() - cpu) / 1e9);
      }
    }
    Files.write(Path.of(args[1]), results, StandardCharsets.UTF_8);
  }
}
