package io.shoal;

import java.io.File;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.server.common.HdfsServerConstants.StartupOption;
import org.apache.hadoop.hdfs.server.namenode.NameNode;
import org.apache.hadoop.metrics2.lib.DefaultMetricsSystem;

/**
 * Starts a NameNode, formatting its name directory first when it holds no namespace:
 * both in one JVM, where `NameNode -format` and then `NameNode` would start two (a
 * JVM start with Hadoop's classes is seconds on a small VM).
 *
 * <p>Usage: NameNodeMain CLUSTER_ID NAME_DIR
 */
public final class NameNodeMain {
    private NameNodeMain() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: NameNodeMain CLUSTER_ID NAME_DIR");
            System.exit(2);
        }
        if (!new File(args[1], "current/VERSION").isFile()) {
            System.err.println("shoal-hadoop: formatting a new namespace in " + args[1]);
            Configuration conf = new HdfsConfiguration();
            StartupOption.FORMAT.setClusterId(args[0]);
            // Throws when the directory cannot be formatted.
            NameNode.format(conf);
            // Formatting registered the retry cache's metrics source, which the
            // NameNode registers again (Hadoop 2.7.3): unregistered, and the metrics
            // system's names forgotten, as in a new JVM.
            DefaultMetricsSystem.instance().unregisterSource("RetryCache.NameNodeRetryCache");
            DefaultMetricsSystem.shutdown();
        }
        NameNode.main(new String[0]);
    }
}
